"""Flags that mean the same thing in every command (device, dtype, temperature 0, logit_mix's weight), and the
command line's behaviour at its edges (a closed pipe, plots without matplotlib)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_cli
from zdiff.checkpoint.store import save_checkpoint
from zdiff.runtime import build_model
from zdiff.sampler import SamplingParams
from zdiff.spec import load_spec
from zdiff.spec.schema import DEFAULT_MIX_WEIGHT, SamplerSpec


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    spec = load_spec("zaya1-tiny")
    return save_checkpoint(build_model(spec.model, seed=0), spec, tmp_path_factory.mktemp("flags") / "ck")


@pytest.fixture
def no_matplotlib(tmp_path):
    """An environment in which `import matplotlib` fails, as on a machine without the plots extra."""
    fake = tmp_path / "fake_site" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('matplotlib is not installed')\n")
    return {"PYTHONPATH": f"{REPO}{os.pathsep}{fake.parent}"}


def _tokens(result) -> list:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["tokens"]


def test_closed_pipe_is_not_an_error():
    """`zdiff check --json | head -1`: the reader leaves early; zdiff exits quietly, not 'error: Broken pipe'."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-m", "zdiff", "check", "zaya1-8b", "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
    child.stdout.close()  # before the child writes a byte: its first write meets a closed pipe
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=120) == 0
    assert "error" not in stderr and "Traceback" not in stderr, stderr


def test_temperature_zero_is_greedy(checkpoint):
    common = ("generate", checkpoint, "--prompt", "def f(x):", "--max-new-tokens", "8", "--json", "--seed", "5")
    greedy = _tokens(run_cli(*common, "--sampler", "greedy"))
    assert _tokens(run_cli(*common, "--temperature", "0")) == greedy
    assert _tokens(run_cli(*common, "--temperature", "0", "--sampler", "greedy")) == greedy
    sampled = _tokens(run_cli(*common, "--temperature", "3"))
    assert sampled != greedy  # the comparison above can fail: a hot sampler leaves the argmax path
    clash = run_cli(*common, "--temperature", "0", "--sampler", "lossless")
    assert clash.returncode == 2 and "--temperature 0 means greedy decoding" in clash.stderr


def test_logit_mix_without_a_weight_is_not_lossless(checkpoint):
    assert SamplingParams.from_spec(SamplerSpec(), sampler="logit_mix").mix_weight == DEFAULT_MIX_WEIGHT < 1.0
    assert SamplingParams.from_spec(SamplerSpec(kind="logit_mix", mix_weight=0.3)).mix_weight == 0.3
    assert SamplingParams.from_spec(SamplerSpec()).mix_weight == 1.0  # lossless never reads it
    common = ("generate", checkpoint, "--prompt", "import os", "--max-new-tokens", "12", "--json", "--seed", "1",
              "--sampler", "logit_mix")
    default = run_cli(*common)
    assert f"logit_mix with its default weight w = {DEFAULT_MIX_WEIGHT}" in default.stderr
    assert _tokens(default) == _tokens(run_cli(*common, "--mix-weight", str(DEFAULT_MIX_WEIGHT)))


def test_device_and_dtype_flags(checkpoint):
    for command in (("generate", checkpoint, "--prompt", "x"), ("serve", checkpoint), ("train", "zaya1-tiny",
                                                                                      "--mode", "ar", "--steps", "1",
                                                                                      "--out", "unused")):
        bad = run_cli(*command, "--device", "gpu0")
        assert bad.returncode == 2 and "--device must be cpu, cuda or cuda:N, got 'gpu0'" in bad.stderr, bad.stderr
    if not torch.cuda.is_available():
        for command in (("generate", checkpoint, "--prompt", "x"), ("serve", checkpoint)):
            missing = run_cli(*command, "--device", "cuda:1")
            assert missing.returncode == 2 and "--device cuda:1: " in missing.stderr
            assert "no CUDA or ROCm GPU" in missing.stderr
    common = ("generate", checkpoint, "--prompt", "ab", "--max-new-tokens", "4", "--json", "--sampler", "greedy")
    fp16 = run_cli(*common, "--dtype", "fp16", "--mode", "ar")
    assert fp16.returncode == 0, fp16.stderr
    wrong = run_cli(*common, "--dtype", "fp64")
    assert wrong.returncode == 2 and "--dtype must be one of" in wrong.stderr


def test_histogram_without_matplotlib_fails_before_decoding(tmp_path, no_matplotlib):
    """The flag is refused up front: the checkpoint does not even exist, and that error would come later."""
    result = run_cli("generate", tmp_path / "no-such-checkpoint", "--prompt", "x", "--histogram", tmp_path / "h.png",
                     env_extra=no_matplotlib)
    assert result.returncode == 2 and "--histogram needs matplotlib" in result.stderr, result.stderr


@pytest.mark.slow
def test_train_without_matplotlib_says_so(tmp_path, no_matplotlib):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("def add(a, b):\n    return a + b\n" * 200)
    result = run_cli("train", "zaya1-tiny", "--mode", "ar", "--steps", "1", "--batch-size", "2", "--seq-len", "32",
                     "--eval-windows", "2", "--data", corpus, "--out", tmp_path / "run", env_extra=no_matplotlib)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "run" / "loss.png").exists()
    assert "zdiff: warning:" in result.stderr and "loss.png not written: matplotlib is not installed" in result.stderr


def test_generate_json_names_its_forward_counts(checkpoint):
    result = run_cli("generate", checkpoint, "--prompt", "a", "--prompt", "bc", "--max-new-tokens", "6", "--json",
                     "--sampler", "greedy")
    assert result.returncode == 0, result.stderr
    run = next(iter(json.loads(result.stdout)["runs"].values()))
    engine = run["engine"]
    assert "forward_passes" not in engine
    assert engine["batch_forwards"] == engine["decode_steps"] + engine["prefill_forwards"]
    assert engine["prefill_forwards"] >= 1
    # the result's forward_passes count each request's decode steps: two requests batched share a step
    assert engine["decode_steps"] <= run["forward_passes"] <= 2 * engine["decode_steps"]


def test_generate_speculation_flags(checkpoint):
    """--verify-lengths / --expert-budgets (the engine's options) and --verify-length / --expert-budget (each
    request's): greedy tokens unchanged, the steps per (P, d, budget) reported in --json, bad values refused."""
    common = ("generate", checkpoint, "--prompt", "def f(x):", "--max-new-tokens", "10", "--json", "--sampler",
              "greedy", "--proposals", "2")
    greedy = _tokens(run_cli(*common))
    capped = run_cli(*common, "--verify-lengths", "1,3", "--expert-budgets", "off,0", "--verify-length", "1",
                     "--expert-budget", "on")
    assert _tokens(capped) == greedy
    engine = next(iter(json.loads(capped.stdout)["runs"].values()))["engine"]
    assert engine["verify_lengths"] == [1, 3] and engine["expert_budgets"] == [None, 0]
    assert {(s["P"], s["verify"], s["budget"]) for s in engine["steps_used"]} == {(2, 1, 0)}
    for flags, message in ((("--verify-lengths", "0"), "--verify-lengths must be"),
                           (("--expert-budgets", "some"), "--expert-budgets must be"),
                           (("--verify-lengths", "3", "--verify-length", "1"), "verify_length: must be 0"),
                           (("--verify-lengths", "9"), "verify_lengths: must be")):
        bad = run_cli(*common, *flags)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
