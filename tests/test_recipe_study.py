"""benchmarks/recipe_study.py end to end at toy size: one AR stage, two conversion recipes (data targets and
a TV self-distillation mix), each measured by the acceptance benchmark; the table and JSON agree."""

import json
import os
import subprocess
import sys

from conftest import REPO
from training_helpers import micro_corpus


def test_recipe_study_script_smoke(tmp_path):
    corpus = micro_corpus(tmp_path, files=12)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    argv = [sys.executable, str(REPO / "benchmarks" / "recipe_study.py"), "--out", str(tmp_path / "study"), "--data",
            str(corpus), "--rows", "data-200", "mix-tv-200", "mix-200-onpolicy0.5", "--ar-steps", "2",
            "--steps-scale", "0.01", "--batch-size", "2", "--seq-len", "16", "--eval-windows", "2", "--prompts", "3",
            "--new-tokens", "4", "--onpolicy-sequences", "5"]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    study = json.loads((tmp_path / "study" / "study.json").read_text())
    assert list(study) == ["data-200", "mix-tv-200", "mix-200-onpolicy0.5"]
    # the on-policy row trained on a mixture of the corpus and 5 samples of the AR checkpoint (up to 8 prompt +
    # 4 new tokens each, plus a separator)
    onpolicy = json.loads((tmp_path / "study" / "onpolicy" / "manifest.json").read_text())
    assert onpolicy["train"]["documents"] == 5
    assert 5 * 2 <= onpolicy["train"]["tokens"] + onpolicy["heldout"]["tokens"] <= 5 * (8 + 4 + 1)
    config = json.loads((tmp_path / "study" / "mix-200-onpolicy0.5" / "run.json").read_text())["config"]
    assert config["data"] == f"{corpus}:0.5,{tmp_path / 'study' / 'onpolicy'}:0.5"
    assert study["mix-tv-200"]["recipe"]["loss"] == [1.0, 1.0, "tv"] and study["data-200"]["recipe"]["steps"] == 2
    spec = (tmp_path / "study" / "mix-tv-200" / "final" / "spec.yaml").read_text()
    assert "divergence: tv" in spec and "distill_weight: 1.0" in spec and "draft_acceptance: null" in spec
    table = (tmp_path / "study" / "study.md").read_text().splitlines()
    assert len(table) == 5 and table[2].startswith("| data-200 | 2 |")
    lossless = study["data-200"]["samplers"]["lossless"]
    assert f"{lossless['tokens_per_forward']:.2f} [" in table[2]
    mix = study["mix-tv-200"]["samplers"]["lossless"]
    difference = mix["tokens_per_forward"] - lossless["tokens_per_forward"]
    assert f"| {difference:+.2f} [" in table[3] and "| - |" in table[2]  # paired against the first row


def test_block_16_rows_write_a_spec_that_loads_with_that_block_size(tmp_path):
    """The rows that change the block size drop the old acceptance levels (the loader picks the new size's)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from recipe_study import BASE, RECIPES, row_spec

    from zdiff.spec import load_spec

    for name in ("data-200-block16", "mix-200-block16"):
        spec = load_spec(row_spec(name, {**BASE, **RECIPES[name]}, tmp_path))
        assert spec.diffusion.block_size == 16 and max(spec.diffusion.acceptance_levels) < 16
        assert spec.diffusion.loss_alpha == 1.0


def test_slot_weight_rows_write_the_rate_into_the_spec(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from recipe_study import BASE, RECIPES, row_spec

    from zdiff.spec import load_spec

    spec = load_spec(row_spec("mix-200-slots0.5", {**BASE, **RECIPES["mix-200-slots0.5"]}, tmp_path))
    assert spec.diffusion.loss.draft_acceptance == 0.5 and spec.diffusion.loss.distill_weight == 1.0
