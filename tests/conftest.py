import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# Without a GPU, Triton kernels run in the interpreter. The flag is read when a kernel is
# decorated, so it must be set before any zdiff kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns until this is chosen explicitly

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (hf_models, ...) import by name


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need a CUDA / ROCm device: skipped cleanly here, run by benchmarks/gpu_session.py there."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA or ROCm device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def repo() -> Path:
    return REPO


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float = 0.0, what: str = ""):
    """torch.testing.assert_close, but the message says where the worst element is and its neighbours."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    bad = torch.nonzero(~torch.isfinite(actual))[:5].tolist()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values at {bad}"
    err = (actual - expected).abs()
    bound = atol + rtol * expected.abs()
    if (err > bound).any():
        worst = torch.argmax(err - bound)
        index = np.unravel_index(worst.item(), tuple(actual.shape))
        raise AssertionError(
            f"{what}: {(err > bound).sum().item()} of {err.numel()} elements differ; "
            f"worst at {tuple(int(i) for i in index)}: "
            f"got {actual[index].item():.6g}, expected {expected[index].item():.6g} "
            f"(max abs err {err.max().item():.3g}, rtol {rtol}, atol {atol})"
        )


def run_cli(*args, cwd=None, env_extra=None):
    """Run `python -m zdiff ...` in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "zdiff", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@pytest.fixture
def poison_allocations(monkeypatch):
    """Every tensor the code under test allocates with torch.empty / empty_like starts as NaN (floats)
    or -7 (integers), so an element a kernel forgets to write fails the comparison."""
    poison_torch_allocations(monkeypatch)


def poison_torch_allocations(monkeypatch):
    """`poison_allocations` from this point of a test on (until its end)."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-7)

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))


def aot_family_reports(family: str, targets=("mi300x", "mi355x", "h200"), spec: str = "zaya1-8b", processes: int = 2):
    """Resource reports of a family's default configs compiled for real (zdiff.codegen.aot_check) in
    subprocesses without TRITON_INTERPRET, targets spread over `processes` workers."""
    import json
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(REPO), TRITON_DISABLE_LINE_INFO="1")
    groups = [list(targets[i::processes]) for i in range(processes) if targets[i::processes]]
    jobs = [subprocess.Popen([sys.executable, "-m", "zdiff.codegen.aot_check", family, spec, *group],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for group in groups]
    reports = []
    for job in jobs:
        out, err = job.communicate(timeout=900)
        assert job.returncode == 0, err[-3000:]
        reports += json.loads(out.strip().splitlines()[-1])
    return reports
