"""`zdiff train` end to end: exact resume after SIGKILL, data parallel = single process, CLI errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_cli
from training_helpers import micro_corpus, micro_spec

FAST = ["--batch-size", "4", "--seq-len", "24", "--warmup", "3", "--eval-windows", "4", "--lr", "3e-3"]


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train_cmd(spec, corpus, out, steps, *extra):
    return [sys.executable, "-m", "zdiff", "train", str(spec), "--data", str(corpus), "--mode", "tidar",
            "--steps", str(steps), "--out", str(out), "--checkpoint-every", "5", *FAST, *extra]


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO))


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path):
    spec, corpus = micro_spec(tmp_path), micro_corpus(tmp_path)
    steps = 40
    whole = subprocess.run(_train_cmd(spec, corpus, tmp_path / "whole", steps), env=_env(), capture_output=True,
                           text=True)
    assert whole.returncode == 0, whole.stderr

    victim = subprocess.Popen(_train_cmd(spec, corpus, tmp_path / "killed", steps), env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and not (latest.is_file() and latest.read_text().strip() >= "step_0000010"):
        time.sleep(0.05)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    records = _records(tmp_path / "killed")
    assert records[-1]["step"] < steps  # it really died mid-run

    resumed = subprocess.run(_train_cmd(spec, corpus, tmp_path / "killed", steps, "--resume"), env=_env(),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _records(tmp_path / "whole"), _records(tmp_path / "killed")
    assert [r["step"] for r in a] == [r["step"] for r in b]  # no gaps, no duplicates
    for ra, rb in zip(a, b):
        for key in ("loss", "ar_loss", "diffusion_loss", "heldout_ar_nats", "heldout_diffusion_nats"):
            assert ra.get(key) == rb.get(key), (ra["step"], key)
    wa = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    wb = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (tmp_path / "whole" / "loss.png").stat().st_size > 1000


def _torchrun(nproc, *args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "zdiff", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_data_parallel_matches_single_process(tmp_path, sharding):
    spec, corpus = micro_spec(tmp_path), micro_corpus(tmp_path)
    args = ["train", str(spec), "--data", str(corpus), "--mode", "tidar", "--steps", "8",
            "--checkpoint-every", "4", *FAST]
    single = run_cli(*args, "--out", tmp_path / "single", env_extra={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    extra = ["--fsdp"] if sharding == "fsdp" else []
    multi = _torchrun(2, *args, "--out", str(tmp_path / "multi"), *extra)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert json.loads((tmp_path / "multi" / "run.json").read_text())["world_size"] == 2
    a = [r for r in _records(tmp_path / "single") if "loss" in r]
    b = [r for r in _records(tmp_path / "multi") if "loss" in r]
    assert len(a) == len(b) == 8
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4), ra["step"]
    wa = load_file(tmp_path / "single" / "final" / "model.safetensors")
    wb = load_file(tmp_path / "multi" / "final" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=1e-4)


KERNELS = ["--backend", "triton", "--device", "cpu", "--batch-size", "2", "--seq-len", "4", "--warmup", "1",
           "--eval-windows", "1", "--lr", "3e-3", "--checkpoint-every", "2"]
INTERPRETER = {"TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def kernel_run_inputs(tmp_path_factory):
    """The micro spec trained 2 steps in one process on the generated kernels (the interpreter). Two layers:
    under FSDP2 layer 0's last fused residual + norm reads layer 1's attn_norm (kept in the root unit)."""
    root = tmp_path_factory.mktemp("kernels")
    spec = micro_spec(root)
    corpus = micro_corpus(root, files=3)
    args = ["train", str(spec), "--data", str(corpus), "--mode", "tidar", "--steps", "2", *KERNELS]
    env = dict(INTERPRETER, ZDIFF_CACHE=str(root / "cache"))
    single = run_cli(*args, "--out", root / "single", env_extra=env)
    assert single.returncode == 0, single.stderr[-3000:]
    assert "triton backend" in single.stdout
    return root, args, env


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_data_parallel_on_the_kernels_matches_single_process(kernel_run_inputs, sharding):
    root, args, env = kernel_run_inputs
    out = root / sharding
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "zdiff",
           *args, "--out", str(out), *(["--fsdp"] if sharding == "fsdp" else [])]
    multi = subprocess.run(cmd, env=dict(_env(), **env), capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stderr[-3000:]
    a = [r for r in _records(root / "single") if "loss" in r]
    b = [r for r in _records(out) if "loss" in r]
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        for key in ("loss", "ar_loss", "diffusion_loss", "distill_loss"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4), (ra["step"], key)
    wa = load_file(root / "single" / "final" / "model.safetensors")
    wb = load_file(out / "final" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=1e-4)


def test_train_cli_errors(tmp_path):
    spec, corpus = micro_spec(tmp_path), micro_corpus(tmp_path, files=3)
    base = ["train", spec, "--data", corpus, "--mode", "ar", "--out", tmp_path / "run", *FAST]
    ok = run_cli(*base, "--steps", "2")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "run" / "final" / "spec.yaml").is_file()
    again = run_cli(*base, "--steps", "2")
    assert again.returncode == 2 and "already holds a run" in again.stderr
    changed = run_cli(*base, "--steps", "2", "--lr", "0.5", "--resume")
    assert changed.returncode == 2 and "--resume: --lr was 0.003 in the run, now 0.5" in changed.stderr
    missing = run_cli("train", spec, "--data", tmp_path / "nope", "--mode", "ar", "--steps", "1",
                      "--out", tmp_path / "r2")
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr
    assert "Traceback" not in missing.stderr + changed.stderr + again.stderr
    odd = run_cli("train", spec, "--data", corpus, "--mode", "ar", "--steps", "1", "--out", tmp_path / "r3",
                  "--batch-size", "0")
    assert odd.returncode == 2 and "--batch-size must be at least 1, got 0" in odd.stderr


def test_conversion_from_an_ar_checkpoint(tmp_path):
    """--init with a checkpoint of another model is refused; with the right one, TiDAR training starts from it."""
    spec, corpus = micro_spec(tmp_path), micro_corpus(tmp_path, files=3)
    ar = run_cli("train", spec, "--data", corpus, "--mode", "ar", "--steps", "2", "--out", tmp_path / "ar", *FAST)
    assert ar.returncode == 0, ar.stderr
    wrong = run_cli("train", "zaya1-tiny", "--data", corpus, "--mode", "tidar", "--steps", "1",
                    "--init", tmp_path / "ar" / "final", "--out", tmp_path / "bad", *FAST)
    assert wrong.returncode == 2 and "model.hidden_size (128 in the spec, 32 in the checkpoint)" in wrong.stderr
    td = run_cli("train", spec, "--data", corpus, "--mode", "tidar", "--steps", "2",
                 "--init", tmp_path / "ar" / "final", "--out", tmp_path / "td", *FAST)
    assert td.returncode == 0, td.stderr
    info = json.loads((tmp_path / "td" / "run.json").read_text())
    assert "initialised from" in info["note"]
    first = _records(tmp_path / "td")[0]
    assert first["diffusion_loss"] is not None and first["ar_loss"] < _records(tmp_path / "ar")[0]["ar_loss"]
    # the default targets distil: the divergence is logged next to the data cross-entropy (AR runs: null)
    assert first["distill_loss"] > 0 and _records(tmp_path / "ar")[0]["distill_loss"] is None


def test_bf16_autocast_trains(tmp_path):
    spec, corpus = micro_spec(tmp_path), micro_corpus(tmp_path, files=3)
    runs = {}
    for dtype in ("fp32", "bf16"):
        r = run_cli("train", spec, "--data", corpus, "--mode", "tidar", "--steps", "3", "--dtype", dtype,
                    "--out", tmp_path / dtype, *FAST)
        assert r.returncode == 0, r.stderr
        runs[dtype] = [x for x in _records(tmp_path / dtype) if "loss" in x]
    first32, first16 = runs["fp32"][0]["loss"], runs["bf16"][0]["loss"]
    assert first16 != first32 and first16 == pytest.approx(first32, rel=0.02)  # same batch, bf16 compute
    assert all(torch.isfinite(torch.tensor(x["loss"])) for x in runs["bf16"])


def test_convert_an_imported_hf_checkpoint_with_its_tokenizer(tmp_path):
    """The headline path: transformers checkpoint -> zdiff import -> TiDAR conversion with its tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from hf_models import tiny_qwen3_moe

    corpus = micro_corpus(tmp_path, files=4)
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train([str(p) for p in sorted(corpus.iterdir())], trainers.BpeTrainer(vocab_size=90, special_tokens=["[UNK]"]))
    hf_dir = tmp_path / "hf"
    tiny_qwen3_moe(0).save_pretrained(hf_dir)  # model vocabulary 96
    tok.save(str(hf_dir / "tokenizer.json"))
    spare = tok.get_vocab_size()
    assert spare < 96  # the embedding is padded past the tokenizer: the first spare id becomes the mask
    assert run_cli("import", hf_dir, tmp_path / "ck").returncode == 0
    r = run_cli("train", tmp_path / "ck" / "spec.yaml", "--data", corpus, "--mode", "tidar", "--steps", "2",
                "--init", tmp_path / "ck", "--out", tmp_path / "conv", *FAST)
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "conv" / "run.json").read_text())
    assert info["tokenizer"].endswith("tokenizer.json") and f"mask token {spare} (a spare id" in info["note"]
    import zdiff

    converted = zdiff.load_model(tmp_path / "conv" / "final")
    assert (tmp_path / "conv" / "final" / "tokenizer.json").is_file()
    from zdiff.spec import load_spec

    assert load_spec(tmp_path / "conv" / "final" / "spec.yaml").diffusion.mask_token_id == spare
    assert converted.spec.vocab_size == 96


def test_sizes_that_cannot_fit_are_refused_before_anything_is_built(tmp_path, monkeypatch):
    """--seq-len / --batch-size are checked against the memory formula first: no pattern, batch or model
    is built (building the training pattern is made to fail), and the CLI answers in one line."""
    import zdiff.train.objective
    from zdiff.errors import ZdiffError
    from zdiff.train import TrainConfig, train

    def no_pattern(*_):
        raise AssertionError("the training pattern was built before the size check")
    monkeypatch.setattr(zdiff.train.objective, "training_pattern", no_pattern)
    spec = micro_spec(tmp_path)
    for sizes in ({"seq_len": 10**9}, {"batch_size": 10**9}, {"seq_len": 10**6, "batch_size": 64}):
        cfg = TrainConfig(spec=str(spec), data="stdlib", mode="tidar", steps=1, out=str(tmp_path / "run"), **sizes)
        with pytest.raises(ZdiffError, match=r"expected peak memory .* GB per device .* exceeds the .* GB of"):
            train(cfg)
    assert not (tmp_path / "run").exists()
    cmd = [sys.executable, "-m", "zdiff", "train", str(spec), "--mode", "tidar", "--steps", "1", "--seq-len", "32768",
           "--batch-size", "65536", "--backend", "torch", "--out", str(tmp_path / "cli")]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--seq-len 32768 --batch-size 65536" in result.stderr and "dense attention" in result.stderr


def test_training_stops_at_the_first_non_finite_step(tmp_path, monkeypatch):
    """Step 3's loss is made NaN (so are its gradients). The run stops before applying it, names the step,
    and the step-2 checkpoint stays the latest, with finite weights; no final/ is written."""
    from zdiff.errors import ZdiffError
    from zdiff.train import TrainConfig, train
    from zdiff.train.objective import Objective

    calls, compute = [], Objective.__call__

    def poisoned(self, model, window):
        parts = compute(self, model, window)
        calls.append(1)
        if len(calls) == 3:
            parts.total = parts.total * float("nan")
        return parts
    monkeypatch.setattr(Objective, "__call__", poisoned)
    spec, corpus = micro_spec(tmp_path), micro_corpus(tmp_path, files=3)
    run = tmp_path / "run"
    cfg = TrainConfig(spec=str(spec), data=str(corpus), mode="tidar", steps=5, out=str(run), batch_size=2, seq_len=16,
                      warmup=1, eval_windows=2, checkpoint_every=1)
    with pytest.raises(ZdiffError) as error:
        train(cfg, log=lambda *_: None)
    message = str(error.value)
    assert message.startswith("step 3: non-finite training values (loss nan"), message
    assert "step_0000002" in message and len(message.splitlines()) == 1
    assert (run / "latest").read_text().strip() == "step_0000002"
    assert not (run / "checkpoints" / "step_0000003").exists() and not (run / "final").exists()
    weights = load_file(run / "checkpoints" / "step_0000002" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert [r["step"] for r in _records(run)] == [1, 2]


@pytest.mark.slow
def test_fsdp2_loads_a_checkpoint_shard_by_shard(tmp_path):
    """Meta-device model, sharded, then each of 2 ranks reads only its rows of every tensor (about half the
    checkpoint); gathered, the weights equal a whole load, also when conversion adds a token row."""
    from zdiff.checkpoint.store import save_checkpoint
    from zdiff.runtime import build_model
    from zdiff.spec import load_spec

    spec = load_spec(micro_spec(tmp_path))
    save_checkpoint(build_model(spec.model, seed=7), spec, tmp_path / "ckpt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "fsdp_load_worker.py"), str(tmp_path / "ckpt"), str(tmp_path)]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        assert report["same_equal"] == [] and report["grown_equal"] == [], report
        assert report["same_read"] < 0.6 * report["total"], report  # dim-0 chunks: 2 of 3 experts on rank 0
    buffers = sum(b.numel() * b.element_size() for name, b in build_model(spec.model).state_dict().items()
                  if "balancing_bias" in name)  # replicated, not sharded: every rank reads them
    assert sum(r["same_read"] for r in reports) == reports[0]["total"] + buffers  # the two halves, no more
