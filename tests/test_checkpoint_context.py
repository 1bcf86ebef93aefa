"""What a checkpoint carries besides weights — its whole spec, tokenizer, stop ids, chat template, targets — and
what `zdiff import` repairs or refuses instead of guessing."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import zdiff
from conftest import REPO, run_cli
from hf_models import tiny_qwen3_moe
from zdiff.autotune.cost import cost_report, default_acceptance, format_cost_report
from zdiff.autotune.targets import target_rates
from zdiff.checkpoint.hf_import import import_hf
from zdiff.checkpoint.store import save_checkpoint
from zdiff.errors import CheckpointError, ZdiffError, ZdiffWarning
from zdiff.runtime import build_model
from zdiff.sampler import SamplingParams
from zdiff.serve.chat_template import ChatTemplate
from zdiff.spec import load_spec
from zdiff.spec.schema import TargetName
from zdiff.tokenize import ByteTokenizer


@pytest.fixture(scope="module")
def tidar_checkpoint(tmp_path_factory):
    spec = load_spec("zaya1-tiny")  # a converted spec: diffusion settings with a mask token
    return save_checkpoint(build_model(spec.model, seed=4), spec, tmp_path_factory.mktemp("ctx") / "ck")


def test_loaded_model_generates_from_text_with_the_checkpoints_settings(tidar_checkpoint):
    model = zdiff.load_model(tidar_checkpoint, dtype=torch.float32)
    spec = load_spec(tidar_checkpoint / "spec.yaml")
    assert model.checkpoint.spec == spec and model.checkpoint.spec.diffusion.mask_token_id == 258
    assert model.checkpoint.stop_tokens == (ByteTokenizer().eos_id,)
    # no diffusion= by hand: TiDAR decoding finds its block size, levels and mask token on the model
    result = zdiff.generate(model, "def f(x):", zdiff.generation.SamplingParams(sampler="greedy"), mode="tidar",
                            max_new_tokens=12)
    ids = ByteTokenizer().encode("def f(x):", bos=False)
    by_ids = zdiff.generate(model, [ids], SamplingParams(sampler="greedy"), mode="tidar", max_new_tokens=12,
                            diffusion=spec.diffusion)
    assert result.tokens == by_ids.tokens and by_ids.texts is None
    assert result.texts == [ByteTokenizer().decode(result.tokens[0])]
    assert any(p > 0 for p in result.engine["proposals_used"])  # proposal blocks ran: TiDAR, not AR
    with pytest.raises(ZdiffError, match="all texts or all token-id lists"):
        zdiff.generate(model, ["a", [1, 2]], max_new_tokens=2)
    bare = build_model(spec.model, seed=4)  # not from a checkpoint: text has no tokenizer to go through
    with pytest.raises(ZdiffError, match="text prompts need the checkpoint's tokenizer"):
        zdiff.generate(bare, "x", max_new_tokens=2, mode="ar")


def _hf_dir(tmp_path, generation_config: dict | None):
    hf = tmp_path / "hf"
    tiny_qwen3_moe(0).save_pretrained(hf)
    (hf / "generation_config.json").unlink(missing_ok=True)
    if generation_config is not None:
        (hf / "generation_config.json").write_text(json.dumps(generation_config))
    return hf


def test_import_drops_special_ids_the_vocabulary_lacks(tmp_path):
    """transformers saves its defaults (eos 106 for a 96-id vocabulary): import warns and drops those ids."""
    hf = _hf_dir(tmp_path, {"eos_token_id": [5, 106], "bos_token_id": 300, "pad_token_id": 0})
    with pytest.warns(ZdiffWarning) as caught:
        import_hf(hf, tmp_path / "ck")
    messages = " | ".join(str(w.message) for w in caught)
    assert "eos_token_id [5, 106] names no id" in messages and "bos_token_id 300 names no id" in messages
    kept = json.loads((tmp_path / "ck" / "generation_config.json").read_text())
    assert kept == {"eos_token_id": [5], "bos_token_id": None, "pad_token_id": 0}
    zdiff.load_model(tmp_path / "ck")  # the repaired file passes the checkpoint's own checks
    result = run_cli("import", _hf_dir(tmp_path / "again", {"eos_token_id": 106}), tmp_path / "ck2")
    assert result.returncode == 0 and "zdiff: warning:" in result.stderr and "eos_token_id 106" in result.stderr


def test_import_without_a_tokenizer_warns_and_text_is_refused(tmp_path):
    hf = _hf_dir(tmp_path, None)
    assert not (hf / "tokenizer.json").exists()
    with pytest.warns(ZdiffWarning, match="no tokenizer.json"):
        spec = import_hf(hf, tmp_path / "ck")
    assert spec.targets == tuple(TargetName.__args__)  # compile works for every card without editing the YAML
    model = zdiff.load_model(tmp_path / "ck")  # weights load; only text needs the tokenizer
    with pytest.raises(ZdiffError, match="imported from Hugging Face without tokenizer.json"):
        zdiff.generate(model, "hello", mode="ar", max_new_tokens=2)
    assert zdiff.generate(model, [[1, 2, 3]], mode="ar", max_new_tokens=2).tokens  # ids still decode
    refused = run_cli("generate", tmp_path / "ck", "--prompt", "hello", "--mode", "ar")
    assert refused.returncode == 2 and "without tokenizer.json" in refused.stderr
    with warnings.catch_warnings():  # a second import of the same directory warns again, never silently
        warnings.simplefilter("error", ZdiffWarning)
        with pytest.raises(ZdiffWarning):
            import_hf(hf, tmp_path / "ck3")
    with pytest.raises(CheckpointError):  # a checkpoint's own generation_config is still checked strictly
        (tmp_path / "ck" / "generation_config.json").write_text(json.dumps({"eos_token_id": 500}))
        zdiff.load_model(tmp_path / "ck")


def test_cost_says_when_it_chose_levels_the_spec_does_not_list():
    spec = load_spec("zaya1-8b")
    assert spec.diffusion.acceptance_levels == (0, 2, 5)
    report = cost_report(spec, target_rates("h200"), 8, 4096, default_acceptance(spec.diffusion.block_size))
    assert report["spec_levels"] == [0, 2, 5]
    chosen = {tuple(p["levels"]) for p in report["proposals"] if p["P"] == 3}
    assert chosen != {(0, 2, 5)}  # the cost model's own choice differs here, so the note must appear
    assert "the spec lists [0, 2, 5] and the engine runs its first P" in format_cost_report(report)


def test_chat_template_override(tmp_path, tidar_checkpoint):
    override = tmp_path / "tpl.jinja"
    override.write_text("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")
    template = ChatTemplate.from_checkpoint(tidar_checkpoint, override=override)
    assert template.render([{"role": "user", "content": "hi"}]).startswith("<user>hi")
    with pytest.raises(ZdiffError, match="--chat-template .*cannot be read"):
        ChatTemplate.from_checkpoint(tidar_checkpoint, override=tmp_path / "missing.jinja")
    (tmp_path / "bad.jinja").write_text("{% for %}")
    with pytest.raises(ZdiffError, match="not valid Jinja2"):
        ChatTemplate.from_checkpoint(tidar_checkpoint, override=tmp_path / "bad.jinja")


def test_generate_serve_and_chat_take_a_run_directory(tmp_path, tidar_checkpoint):
    import shutil

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(tidar_checkpoint, run / "checkpoints" / "step_000002")
    (run / "latest").write_text("step_000002\n")
    common = ("--prompt", "ab", "--max-new-tokens", "3", "--sampler", "greedy", "--json")
    latest = run_cli("generate", run, *common)
    assert latest.returncode == 0, latest.stderr
    assert "without final/: using its latest checkpoint step_000002" in latest.stderr
    shutil.copytree(tidar_checkpoint, run / "final")
    final = run_cli("generate", run, *common)
    assert final.returncode == 0 and "using its final/" in final.stderr
    direct = run_cli("generate", tidar_checkpoint, *common)
    assert json.loads(final.stdout)["tokens"] == json.loads(direct.stdout)["tokens"]
    assert "note" not in direct.stderr  # a checkpoint is used as it is, silently
    chat = subprocess.run([sys.executable, "-m", "zdiff", "chat", str(run), "--max-new-tokens", "2"], input="hi\n",
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert chat.returncode == 0 and "using its final/" in chat.stderr, chat.stderr
    for command in (("generate", tmp_path / "nope", "--prompt", "x"), ("serve", tmp_path / "nope"),
                    ("chat", tmp_path / "nope")):
        missing = run_cli(*command)
        assert missing.returncode == 2 and "no such checkpoint or run directory" in missing.stderr
