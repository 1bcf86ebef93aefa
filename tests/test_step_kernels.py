"""The step's layout and bookkeeping kernels (zdiff.generation.step_kernels, interpreter on the CPU) against their
torch versions (step_torch, the CPU path and what the engine ran before), bit for bit, on random slot states:
ragged draft counts, idle and AR slots, stop ids that hit and miss, slots at their length limit."""

import dataclasses

import pytest
import torch

from zdiff.generation import step_kernels, step_torch
from zdiff.generation.slot_state import SlotState


def _random_state(gen: torch.Generator, slots: int, b: int, max_stop: int = 3) -> SlotState:
    def ints(low, high, *shape):
        return torch.randint(low, high, shape, generator=gen)

    st = SlotState.allocate(slots, b, vocab=1, max_stop=max_stop, device="cpu")
    st.active.copy_(ints(0, 4, slots) > 0)
    st.tidar.copy_(ints(0, 3, slots) > 0)
    st.cache_len.copy_(ints(0, 9, slots))
    st.pending.copy_(ints(0, 50, slots))
    st.drafts.copy_(ints(0, 50, slots, b - 1))
    st.num_drafts.copy_(ints(0, b, slots))
    st.generated.copy_(ints(0, 6, slots))
    st.max_new.copy_(st.generated + ints(0, 6, slots))
    stop = ints(0, 50, slots, max_stop)
    # stop ids copied from the drafts and pending tokens so that stops really hit, some unused (-1)
    if b > 1:
        stop[:, 0] = st.drafts[:, ints(0, b - 1, 1).item()]
    stop = torch.where(ints(0, 3, slots, max_stop) == 0, -1, stop)
    st.stop_ids.copy_(stop)
    st.packet.copy_(ints(-99, 99, *st.packet.shape))  # stale values every column must overwrite
    return st


def _clone(st: SlotState) -> SlotState:
    return SlotState(**{f.name: getattr(st, f.name).clone() for f in dataclasses.fields(st)})


def _assert_states_equal(a: SlotState, b: SlotState):
    for f in dataclasses.fields(a):
        assert torch.equal(getattr(a, f.name), getattr(b, f.name)), f.name


CASES = [(b, rf) for b in (1, 2, 4) for rf in (0, 3)]


@pytest.mark.parametrize("block_size,rf", CASES)
def test_layout_kernel_is_the_torch_layout_bit_for_bit(block_size, rf):
    gen = torch.Generator().manual_seed(100 * block_size + rf)
    all_levels = list(range(block_size))
    for trial in range(12):
        slots = int(torch.randint(1, 6, (1,), generator=gen))
        st = _random_state(gen, slots, block_size)
        count = int(torch.randint(0, len(all_levels) + 1, (1,), generator=gen)) if block_size > 1 else 0
        levels = torch.tensor(sorted(torch.randperm(len(all_levels), generator=gen)[:count].tolist()),
                              dtype=torch.long)
        # every draft verified, a truncated verify length d (1 + d rows, drafts past d dropped), or none
        truncated = 1 + int(torch.randint(1, block_size, (1,), generator=gen)) if block_size > 1 else 1
        verify_rows = (block_size, truncated, 1)[trial % 3] if block_size > 1 else 1
        rows = verify_rows + count * block_size
        args = (st, rows, verify_rows, levels, block_size, 7, rf)
        expected = step_torch.layout_rows(*args)
        got = step_kernels.layout(True, *args)
        names = ("ids", "positions", "preds", "lengths", "causal", "rows", "blocks", "verify_drafts", "first_position")
        assert len(expected) == len(got) == len(names)
        for name, e, g in zip(names, expected, got):
            assert e.dtype == g.dtype and torch.equal(e, g), (name, trial, e, g)


@pytest.mark.parametrize("block_size", (1, 2, 4))
def test_settle_kernel_is_the_torch_bookkeeping_bit_for_bit(block_size):
    gen = torch.Generator().manual_seed(block_size)
    finished = stopped = 0
    for trial in range(25):
        slots = int(torch.randint(1, 7, (1,), generator=gen))
        st = _random_state(gen, slots, block_size)
        n = (torch.rand(slots, generator=gen) * (st.num_drafts + 1)).long()
        token = torch.randint(0, 50, (slots,), generator=gen)
        token = torch.where(torch.rand(slots, generator=gen) < 0.3, st.stop_ids[:, -1].clamp_min(0), token)
        torch_state, kernel_state = _clone(st), _clone(st)
        expected = step_torch.settle(torch_state, n, token)
        got = step_kernels.settle(True, kernel_state, n, token)
        assert torch.equal(expected[3], st.cache_len) and torch.equal(torch_state.cache_len, st.cache_len + expected[1])
        names = ("n", "counts", "active", "old_len", "next_position")
        assert len(expected) == len(got) == len(names)
        for name, e, g in zip(names, expected, got):
            assert e.dtype == g.dtype and torch.equal(e, g), (name, trial, e, g)
        _assert_states_equal(torch_state, kernel_state)
        b = block_size
        done = torch_state.packet[:, b + 1].bool()
        finished += int(done.sum())
        stopped += int((done & (torch_state.generated < torch_state.max_new)).sum())
    assert finished and stopped, "the random states never exercised a stop or a length limit"


AOT_SCRIPT = """
import json, warnings
warnings.simplefilter("ignore")
from zdiff.codegen.aot import check_fits, compile_for_target
from zdiff.generation import commit_kernel, step_kernels
reports = []
for target in ("h200", "mi300x", "mi355x"):
    for kernel, signature, constexprs in step_kernels.aot_kernels() + commit_kernel.aot_kernels():
        _, report = compile_for_target(kernel, signature, constexprs, target, num_warps=4)
        check_fits(report, str(constexprs))
        reports.append(report.to_dict())
print(json.dumps(reports))
"""


def test_step_and_commit_kernels_compile_ahead_of_time_without_spills():
    """Real compilation for sm_90, gfx942 and gfx950 (not the interpreter), in a process without TRITON_INTERPRET:
    the layout, bookkeeping and commit kernels at ZAYA1-8B shapes."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-c", AOT_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = json.loads(result.stdout.strip().splitlines()[-1])
    assert {r["kernel"] for r in reports} == {"layout_kernel", "settle_kernel", "commit_kernel"}
    assert {r["arch"] for r in reports} == {"sm_90", "gfx942", "gfx950"}
    for r in reports:
        assert r["spills"] == 0 and r["registers"] > 0 and r["binary_bytes"] > 500, r
