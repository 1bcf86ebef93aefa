"""Top-k / top-p filtering: the one-launch kernel (interpreter) returns exactly what the sort-based torch rule
returns (`process_logits`, after `mixed_targets` on the verifier's target rows), for every sampler, ragged
vocabularies, model-dtype inputs, ties at both thresholds, banned ids, rows that are mostly -inf and filters
that are off; and the torch rule itself keeps ties at the top-p threshold (one rule, written as thresholds)."""

import pytest
import torch

from conftest import DEVICE
from zdiff.generation.batched_sampling import KIND_CODES, mixed_targets, process_logits
from zdiff.generation.filter_kernel import launch_filter

KINDS = ("lossless", "logit_mix", "greedy")


def _slots(S, gen):
    return dict(kind=torch.tensor([KIND_CODES[KINDS[s % 3]] for s in range(S)]),
                temperature=0.4 + 1.5 * torch.rand(S, generator=gen),
                top_k=torch.tensor([(0, 3, 17, 1, 0, 1000)[s % 6] for s in range(S)]),
                top_p=torch.tensor([(0.6, 1.0, 0.9, 0.5, 0.97, 0.3)[s % 6] for s in range(S)]),
                mix_weight=torch.rand(S, generator=gen))


def _with_ties(logits, gen):
    """Copies of each row's top values elsewhere in the row, so both thresholds land on ties."""
    S, N, V = logits.shape
    top = logits.topk(min(6, V), dim=-1)
    at = torch.randint(0, V, (S, N, top.values.shape[-1]), generator=gen)
    return logits.scatter(-1, at, top.values)


def _kernel(logits, p, banned_id, draft=None, num_drafts=None):
    on = {k: v.to(DEVICE) for k, v in p.items()}
    mix = dict(mix_logits=draft.to(DEVICE), num_drafts=num_drafts.to(DEVICE), mix_weight=on["mix_weight"]) \
        if draft is not None else {}
    return launch_filter(logits.to(DEVICE), on["kind"], on["temperature"], on["top_k"], on["top_p"], banned_id,
                         block_v=32, **mix).cpu()


def _reference(logits, p, banned_id, draft=None, num_drafts=None):
    banned = torch.tensor([banned_id]) if banned_id >= 0 else None
    target = logits if draft is None else mixed_targets(logits, draft, num_drafts, p["kind"], p["mix_weight"])
    return process_logits(target, p["temperature"], p["top_k"], p["top_p"], banned, True)


@pytest.mark.parametrize("V", [5, 97, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_filter_kernel_equals_the_sort_based_rule(V, dtype):
    gen = torch.Generator().manual_seed(V)
    S, N = 6, 3
    p = _slots(S, gen)
    logits = _with_ties(torch.randn(S, N, V, generator=gen) * 2, gen).to(dtype)
    out = _kernel(logits, p, banned_id=min(4, V - 1))
    assert torch.equal(out, _reference(logits, p, min(4, V - 1)))
    kept = (out > float("-inf")).sum(-1)
    assert (kept < V - 1).any() and (kept > 1).any()  # the filters cut, and not to one token everywhere


def test_filter_kernel_mixes_the_verifier_targets_first():
    """Target rows (S, D+1, V): logit_mix slots mix their drafted rows with the draft logits before tempering and
    filtering; the draft rows (S, D, V) are filtered unmixed."""
    gen = torch.Generator().manual_seed(11)
    S, D, V = 6, 3, 77
    p = _slots(S, gen)
    ar = _with_ties(torch.randn(S, D + 1, V, generator=gen) * 2, gen)
    draft = torch.randn(S, D, V, generator=gen) * 2
    draft[:, :, 9] = float("-inf")  # a caller's mask inside the drafts: mixing must floor it, not make NaN
    num_drafts = torch.tensor([3, 2, 0, 1, 3, 2])
    out = _kernel(ar, p, -1, draft, num_drafts)
    ref = _reference(ar, p, -1, draft, num_drafts)
    assert torch.equal(out, ref) and not out.isnan().any()
    unmixed = _reference(ar, p, -1)
    assert not torch.equal(out[1], unmixed[1])  # slot 1 is logit_mix with drafts: the mix changed its rows
    assert torch.equal(_kernel(draft, p, -1), _reference(draft, p, -1))


def test_filter_kernel_on_rows_that_are_mostly_or_all_masked():
    gen = torch.Generator().manual_seed(5)
    S, N, V = 6, 2, 40
    p = _slots(S, gen)
    logits = torch.randn(S, N, V, generator=gen)
    logits[:, 0, 3:] = float("-inf")  # three finite logits, top-k asks for up to 1000
    logits[:, 1, :] = float("-inf")
    out = _kernel(logits, p, banned_id=1)
    assert torch.equal(out, _reference(logits, p, 1))
    assert (out[:, 1] == float("-inf")).all() and (out[:, 0, 1] == float("-inf")).all()


def test_filters_that_are_off_keep_every_logit():
    gen = torch.Generator().manual_seed(2)
    S, N, V = 3, 2, 50
    p = _slots(S, gen)
    p["top_k"].zero_()
    p["top_p"].fill_(1.0)
    logits = torch.randn(S, N, V, generator=gen)
    out = _kernel(logits, p, -1)
    assert torch.equal(out, logits * (1.0 / p["temperature"])[:, None, None])


def test_top_p_keeps_every_tie_at_its_threshold():
    """z = (2, 1, 1, 0): p = 0.6 needs the mass above a 1 (0.47..) < 0.6, so both 1s stay (a stable sort cut
    the second); top-k 2 keeps both 1s too."""
    z = torch.tensor([[[2.0, 1.0, 1.0, 0.0]]])
    one = torch.ones(1)
    kept = process_logits(z, one, torch.zeros(1, dtype=torch.long), torch.tensor([0.6]), None, True)
    assert (kept > float("-inf")).tolist() == [[[True, True, True, False]]]
    kept = process_logits(z, one, torch.tensor([2]), one, None, True)
    assert (kept > float("-inf")).tolist() == [[[True, True, True, False]]]
