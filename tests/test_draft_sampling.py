"""Draft sampling of the decode step: the split-vocabulary kernels (interpreter) draw the torch backend's
drafts token for token (every sampler, filtered or not, model-dtype logits, poisoned outputs, empty splits);
the draws follow the tempered, banned, filtered softmax (chi-square with a power check); the rows kernel
equals its torch twin; and the launches of the step's sampling part (verifier + next drafts) are pinned."""

import pytest
import torch

from conftest import DEVICE
from generation_helpers import chi_square_p_value, tiny_vocab_model
from launch_counter import count_launches
from zdiff.generation import decode_step
from zdiff.generation.batched_sampling import GREEDY, KIND_CODES, process_logits
from zdiff.generation.draft_sampling import draft_rows, draft_rows_kernel, sample_drafts
from zdiff.generation.engine import Engine, RequestParams

BANNED = 7


def _slots(S, seed):
    gen = torch.Generator().manual_seed(seed)
    kind = torch.tensor([KIND_CODES[("lossless", "logit_mix", "greedy")[s % 3]] for s in range(S)])
    return dict(kind=kind, temperature=0.5 + torch.rand(S, generator=gen),
                top_k=torch.tensor([(0, 5, 0, 9)[s % 4] for s in range(S)]),
                top_p=torch.tensor([(1.0, 1.0, 0.85, 0.9)[s % 4] for s in range(S)]),
                seed=torch.randint(0, 2**62, (S,), generator=gen),
                first_position=torch.randint(0, 2**40, (S,), generator=gen))


def _draw(backend, logits, p, filtered, **launch):
    on = {k: v.to(DEVICE) for k, v in p.items()}
    top_k = on["top_k"] if filtered else torch.zeros_like(on["top_k"])
    top_p = on["top_p"] if filtered else torch.ones_like(on["top_p"])
    out = torch.full(logits.shape[:2], -7, dtype=torch.long, device=DEVICE)  # poisoned: every draft is written
    banned = torch.tensor([BANNED], device=DEVICE)
    return sample_drafts(backend, logits.to(DEVICE), on["kind"], on["temperature"], top_k, top_p, on["seed"],
                         on["first_position"], banned, BANNED, filtered, out, **launch).cpu()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("filtered", [False, True])
def test_draft_kernels_equal_the_torch_backend(filtered, dtype):
    """6 slots x 3 drafts over V = 50 in chunks of 16 (4 chunks): 3 splits leave the last one empty."""
    S, D, V = 6, 3, 50
    for seed in range(2):
        p = _slots(S, seed)
        logits = (torch.randn(S, D, V, generator=torch.Generator().manual_seed(seed)) * 2).to(dtype)
        kernels = _draw("fused", logits, p, filtered, block_v=16, splits=3)
        reference = _draw("torch", logits, p, filtered)
        assert torch.equal(kernels, reference), (kernels, reference)
        assert (kernels != BANNED).all() and (kernels >= 0).all() and (kernels < V).all()
        z = process_logits(logits, p["temperature"], p["top_k"], p["top_p"], torch.tensor([BANNED]), filtered)
        greedy = p["kind"] == GREEDY
        assert torch.equal(kernels[greedy], z.argmax(-1)[greedy])  # greedy slots: the argmax, no noise
        reseeded = _draw("torch", logits, {**p, "seed": p["seed"] + 1}, filtered)
        assert torch.equal(reseeded[greedy], kernels[greedy]) and not torch.equal(reseeded[~greedy], kernels[~greedy])


@pytest.mark.parametrize("backend", ["fused", "torch"])
def test_draft_draws_follow_the_filtered_softmax(backend):
    """400 draws (200 slots with their own seeds x 2 positions) of one row at temperature 0.8, top-k 4, the
    mask banned: chi-square against the filtered softmax; the same counts reject the unfiltered one."""
    S, D = 200, 2
    row = torch.tensor([1.0, 0.6, -1.0, 0.5, 0.3, -0.2, 0.9, 1.1])  # id 7 (the mask) has the largest logit
    p = dict(kind=torch.zeros(S, dtype=torch.long), temperature=torch.full((S,), 0.8),
             top_k=torch.full((S,), 4), top_p=torch.ones(S), seed=torch.arange(S) * 7919 + 1,
             first_position=torch.full((S,), 11))
    draws = _draw(backend, row.expand(S, D, 8).contiguous(), p, True, block_v=8)
    counts = torch.bincount(draws.flatten(), minlength=8).double()
    z = process_logits(row, torch.tensor(0.8), torch.tensor(4), torch.tensor(1.0), torch.tensor([BANNED]), True)
    assert chi_square_p_value(counts, torch.softmax(z, -1)) > 1e-3
    unfiltered = torch.softmax(row.index_fill(0, torch.tensor([BANNED]), float("-inf")) / 0.8, -1)
    assert chi_square_p_value(counts, unfiltered) < 1e-3


def test_draft_rows_kernel_equals_its_torch_twin():
    gen = torch.Generator().manual_seed(4)
    S, b, P = 40, 6, 3
    levels = torch.tensor([0, 2, 4])
    n = torch.randint(0, b, (S,), generator=gen)
    blocks = torch.randint(0, P + 1, (S,), generator=gen)
    causal = 1 + torch.randint(0, b, (S,), generator=gen)
    active, tidar = torch.rand(S, generator=gen) < 0.8, torch.rand(S, generator=gen) < 0.7
    step_rows = 20  # fewer than the layout's b + P b: the clamp is exercised
    rows, num = draft_rows(n, causal, blocks, active, tidar, levels, b, step_rows)
    on = [t.to(DEVICE) for t in (n, causal, blocks, active, tidar, levels)]
    k_rows = torch.full((S, b - 1), -7, dtype=torch.long, device=DEVICE)
    k_num = torch.full((S,), -7, dtype=torch.long, device=DEVICE)
    draft_rows_kernel[(1,)](*on, k_rows, k_num, S, P, b, step_rows, BLOCK_S=64, BLOCK_P=4, BLOCK_T=8)
    assert torch.equal(k_rows.cpu(), rows) and torch.equal(k_num.cpu(), num)
    assert (num > 0).any() and (num == 0).any() and rows.max() == step_rows - 1  # the clamp and both cases ran


# launches of the step's sampling part (the verifier call and `sample_next_drafts`) on the fused backend, any
# batch and any layer count. Before this module: ~440 (the counter hash ~384 of them: three calls of ~128
# elementwise int64 ops, plus inverse-CDF draft sampling over fp32 copies).
FUSED_VERIFY = {"verify_stats_kernel": 1, "verify_sample_kernel": 1, "verify_finish_kernel": 1}
FUSED_DRAFTS = {"draft_rows_kernel": 1, "draft_sample_kernel": 1, "draft_pick_kernel": 1, "gather": 1, "mm": 1}
# top-k / top-p: one filter launch per side (the verifier's targets and drafts, the next drafts); it was 75 torch
# ops while the filter was the sort of process_logits
FILTERED_VERIFY = {**FUSED_VERIFY, "filter_logits_kernel": 2}
FILTERED_DRAFTS = {**FUSED_DRAFTS, "filter_logits_kernel": 1}


def _sampling_launches(monkeypatch, slots, top_k):
    model, spec = tiny_vocab_model(seed=1)
    seen = {}
    for name in ("verify_slots", "sample_next_drafts"):
        def counted(*args, _f=getattr(decode_step, name), _name=name, **kwargs):
            with count_launches() as counter:
                out = _f(*args, **kwargs)
            ops = {k.split(".")[0]: v for k, v in counter.torch_ops.items()}
            seen.setdefault(_name, []).append({**ops, **counter.triton})
            return out
        monkeypatch.setattr(decode_step, name, counted)
    engine = Engine(model, diffusion=spec.diffusion, max_slots=slots, max_len=32, proposals=2, verifier="fused")
    for i in range(slots):
        engine.add([1, 2, 3], RequestParams(max_new_tokens=5, seed=i, top_k=top_k))
    engine.run()
    return seen


def _at_most(counts: list[dict], pinned: dict) -> bool:
    """Every step launches a subset of the pinned kernels (an AR step skips the draft statistics and the draft
    kernels), and the fullest step exactly the pinned ones."""
    return all(all(pinned.get(k, 0) >= v for k, v in c.items()) for c in counts) and pinned in counts


def test_the_sampling_part_of_a_step_launches_a_handful_of_kernels(monkeypatch):
    for slots in (1, 3):
        seen = _sampling_launches(monkeypatch, slots, top_k=0)
        assert _at_most(seen["verify_slots"], FUSED_VERIFY), seen["verify_slots"]
        assert _at_most(seen["sample_next_drafts"], FUSED_DRAFTS), seen["sample_next_drafts"]
    for slots in (1, 3):
        filtered = _sampling_launches(monkeypatch, slots, top_k=3)
        assert _at_most(filtered["verify_slots"], FILTERED_VERIFY), filtered["verify_slots"]
        assert _at_most(filtered["sample_next_drafts"], FILTERED_DRAFTS), filtered["sample_next_drafts"]
