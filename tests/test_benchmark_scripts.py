"""The GPU-session script must not rot between the sessions that have a GPU: run its smoke mode."""

import json
import os
import subprocess
import sys

from conftest import REPO


def test_gpu_session_script_smoke(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_session.py"), "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["checks"]["fused_verify_matches_reference"]["mismatches"] == 0
    assert not [k for k in data["checks"] if k.endswith("_error")], data["checks"]  # every stage ran
    kernels = {t["kernel"] for t in data["timings"]}
    assert {"fused_verify", "rmsnorm_fwd zdiff", "rmsnorm_fwd torch", "attention_decode zdiff",
            "zdiff experts_forward"} <= kernels, kernels
    assert (tmp_path / "results.md").read_text().startswith("cpu, torch")


def test_train_bench_script_smoke(tmp_path):
    """benchmarks/train_bench.py on tiny shapes: every attention variant and every training-step case runs."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TRITON_INTERPRET="1", ZDIFF_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_bench.py"), "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["kernel"] for r in data["attention"]] == ["zdiff", "flex", "sdpa causal"]
    assert data["attention"][0]["max_abs_diff_vs_flex"] < 1e-4  # fp32 on the CPU: the same pattern as Flex's BlockMask
    cases = {(r["backend"], r["activation_checkpointing"]) for r in data["steps"] if "error" not in r}
    assert cases == {(b, c) for b in ("torch", "triton") for c in (False, True)}, data["steps"]
    losses = [r["loss"] for r in data["steps"]]
    assert max(losses) - min(losses) < 1e-3, losses  # one first step of the same model: same loss on every path
    assert (tmp_path / "results.md").read_text().startswith("cpu, torch")
