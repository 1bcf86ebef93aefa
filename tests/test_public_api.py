"""The README's Python API keeps working whatever else is imported: `zdiff.generate` stays the
function after every public module (zdiff.generation and its submodules included) is loaded, and
the examples give the same results when run twice in one process."""

import importlib
import pkgutil

import torch

import zdiff
from conftest import REPO
from zdiff.checkpoint.store import save_checkpoint
from zdiff.pattern import causal_pattern, training_pattern
from zdiff.runtime import build_model


def _import_every_module() -> list[str]:
    names = [info.name for info in pkgutil.walk_packages(zdiff.__path__, "zdiff.") if info.name != "zdiff.__main__"]
    for name in names:
        importlib.import_module(name)
    return names


def _readme_examples(checkpoint):
    """The README's "Python API" block, the CPU lines, with concrete inputs."""
    spec = zdiff.load_spec(REPO / "examples/specs/zaya1-tiny.yaml")
    model = zdiff.load_model(checkpoint, backend="torch", device="cpu", dtype=torch.float32)
    input_ids = torch.tensor([[104, 105, 106, 107]])
    logits = model(input_ids)
    causal = causal_pattern(4)
    same = model(input_ids, positions=causal.positions(), predecessors=causal.predecessors(),
                 visible=causal.dense_mask())
    tidar = training_pattern(4, spec.diffusion.block_size)
    ids = torch.cat([input_ids, torch.full_like(input_ids, spec.diffusion.mask_token_id)], dim=1)
    pattern_logits = model(ids, positions=tidar.positions(), predecessors=tidar.predecessors(),
                           visible=tidar.dense_mask())
    result = zdiff.generate(model, [[104, 105]], diffusion=spec.diffusion, mode="tidar", max_new_tokens=16)
    text = zdiff.generate(model, "def quicksort(", max_new_tokens=8)
    assert len(text.texts) == 1 and isinstance(text.texts[0], str) and len(text.tokens[0]) <= 8
    return logits, same, pattern_logits, result


def test_generate_stays_callable_and_examples_work_twice(tmp_path):
    names = _import_every_module()
    assert {"zdiff.generation", "zdiff.generation.oracle.loop", "zdiff.generation.oracle.sampling"} <= set(names)
    from zdiff.generation import SamplingParams  # noqa: F401 (the import that used to replace zdiff.generate)

    assert callable(zdiff.generate) and zdiff.generate.__module__ == "zdiff"
    spec = zdiff.load_spec("zaya1-tiny")
    save_checkpoint(build_model(spec.model, seed=0), spec, tmp_path / "ck")

    runs = [_readme_examples(tmp_path / "ck") for _ in range(2)]
    for logits, same, pattern_logits, result in runs:
        assert logits.shape == (1, 4, 264) and torch.isfinite(logits).all()
        torch.testing.assert_close(same, logits, rtol=0, atol=0)
        assert pattern_logits.shape == (1, 8, 264)
        torch.testing.assert_close(pattern_logits[:, :4], logits, rtol=1e-5, atol=1e-5)  # the clean half is causal
        assert len(result.tokens) == 1 and len(result.tokens[0]) == 16
        assert all(0 <= t < 264 and t != spec.diffusion.mask_token_id for t in result.tokens[0])
        assert result.tokens_per_forward >= 1.0 and result.histogram()
    assert runs[0][3].tokens == runs[1][3].tokens  # same seed, same process, same text
    assert callable(zdiff.generate)
