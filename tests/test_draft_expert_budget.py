"""The draft-row expert budget (zdiff.runtime.moe.ExpertRestriction): draft rows route only among the experts
the verify rows of the same layer chose (plus top-m by router mass), the verify rows' outputs (p) stay exactly
what they were, the draft rows' (q) change, and greedy TiDAR with the budget equals greedy AR."""

import functools

import pytest
import torch

from conftest import assert_close
from generation_helpers import VOCAB8_MOE16
from zdiff.errors import ZdiffError
from zdiff.generation import SamplingParams
from zdiff.generation.oracle import DecodeCache, generate
from zdiff.generation.oracle.loop import _Batch
from zdiff.pattern import BatchLayout, decode_pattern, prefill_pattern, training_pattern
from zdiff.runtime import Transformer, build_model, init_weights
from zdiff.runtime.moe import ExpertRestriction, draft_restriction
from zdiff.spec import load_spec, parse_spec

MOE16 = load_spec("zaya1-tiny-moe16")


def _decode_step(model, budget):
    """Prefill two prompts, then one decode step with ragged drafts and levels: (ForwardOutput, layout rows)."""
    spec = MOE16
    b, mask = spec.diffusion.block_size, spec.diffusion.mask_token_id
    prompts = [[256, 10, 11, 12, 13], [256, 40]]
    cache = DecodeCache(spec.model, 2, 64)
    batch = _Batch(model, cache, pad_id=mask, block_size=b)
    batch.run([(p + [mask] * b, prefill_pattern(len(p), b)) for p in prompts])
    for i, p in enumerate(prompts):
        cache.commit(i, list(range(len(p))))
    gen = torch.Generator().manual_seed(1)
    plans = []
    for m, levels in ((5, (0, 2, 4)), (2, (0, 2))):
        ids = torch.randint(0, 256, (m + 1,), generator=gen).tolist() + [mask] * (b * len(levels))
        plans.append((ids, decode_pattern(cache.lengths[len(plans)], m, b, levels)))
    model.forward = functools.partial(Transformer.forward, model, return_routings=True, draft_expert_budget=budget)
    out = batch.run(plans)
    del model.forward
    return out, [(m + 1, len(ids)) for m, (ids, _) in zip((5, 2), plans)]


@pytest.fixture(scope="module")
def moe16():
    # float64: the reference experts run one matmul per expert group, and a BLAS matmul's rounding of a row may
    # depend on how many rows it has (1e-5 in fp32, 1e-14 in fp64); the kernels' rows are bit-independent
    model = build_model(MOE16.model, seed=3, dtype=torch.float64).eval()
    with torch.no_grad():  # a decisive router: choices far from ties, spread over the experts
        for layer in model.layers:
            for p in layer.moe.router.parameters():
                p.mul_(20)
    return model


def _rows(rows, T):
    verify = torch.zeros(2, T, dtype=torch.bool)
    draft = torch.zeros(2, T, dtype=torch.bool)
    for s, (causal, n) in enumerate(rows):
        verify[s, :causal], draft[s, causal:n] = True, True
    return verify, draft


def test_budget_changes_draft_rows_only(moe16):
    free, rows = _decode_step(moe16, None)
    held, _ = _decode_step(moe16, 0)
    T = free.hidden.shape[1]
    verify, draft = _rows(rows, T)
    assert_close(held.logits[verify], free.logits[verify], rtol=0, atol=1e-11, what="p")  # only BLAS rounding
    # q changed (far beyond rounding): the test has teeth
    assert (free.logits[draft] - held.logits[draft]).abs().max() > 1e-6
    E = MOE16.model.moe.num_experts
    outside_free = 0
    for f, h in zip(free.routings, held.routings):
        f, h = f.experts.view(2, T, -1), h.experts.view(2, T, -1)
        loaded = set(f[verify].flatten().tolist()) | {E}
        assert torch.equal(f[verify], h[verify])
        assert set(h[draft].flatten().tolist()) <= loaded
        outside_free += len(set(f[draft].flatten().tolist()) - loaded)
    assert outside_free > 0  # unrestricted, the draft rows do leave the verify rows' experts


def test_extra_expert_is_the_draft_rows_favourite(moe16):
    """With one extra expert by router mass, a layer whose draft rows all want one expert the verify rows did
    not load gets exactly that one: the step equals the unrestricted step (this random model's mask rows agree
    within a layer, so each layer has at most one such expert, checked first)."""
    free, rows = _decode_step(moe16, None)
    T = free.hidden.shape[1]
    verify, draft = _rows(rows, T)
    E = MOE16.model.moe.num_experts
    for f in free.routings:
        f = f.experts.view(2, T, -1)
        assert len(set(f[draft].flatten().tolist()) - set(f[verify].flatten().tolist()) - {E}) <= 1
    held, _ = _decode_step(moe16, 1)
    for f, h in zip(free.routings, held.routings):
        assert torch.equal(f.experts.view(2, T, -1)[draft | verify], h.experts.view(2, T, -1)[draft | verify])


def test_allowed_sets_by_hand():
    """Two sets over 4 experts + skip (class 4), top-1: set 0 loaded by rows 0-1, set 1 by row 2, row 5 has
    no set and loads nothing; one extra expert by the restricted rows' summed probability."""
    experts = torch.tensor([[1], [3], [0], [2], [2], [2]])
    logits = torch.tensor([[0.1, 0.6, 0.1, 0.1, 0.1]] * 3 + [[0.05, 0.05, 0.2, 0.1, 0.6],
                                                             [0.3, 0.05, 0.05, 0.5, 0.1],
                                                             [0.0, 0.0, 1.0, 0.0, 0.0]]).log()
    group = torch.tensor([-1, -1, -1, 0, 1, -1])
    source = torch.tensor([0, 0, 1, -1, -1, -1])
    base = ExpertRestriction(group, 2, source).allowed(experts, logits, 4, skip_expert=True)
    assert base.tolist() == [[False, True, False, True, True], [True, False, False, False, True]]
    more = ExpertRestriction(group, 2, source, extra=1).allowed(experts, logits, 4, skip_expert=True)
    # set 0's restricted row 3 puts most mass (outside 1, 3, skip) on expert 2; set 1's row 4 on expert 3
    assert more.tolist() == [[False, True, True, True, True], [True, False, False, True, True]]
    for extra in (0, 1):  # a set nothing loads allows everything (even with extra experts by mass)
        lonely = ExpertRestriction(group.masked_fill(group == 1, 2), 3, source, extra)
        assert lonely.allowed(experts, logits, 4, skip_expert=False)[2].all()
    rows = ExpertRestriction(group, 2, source).row_mask(base)
    assert rows[0].all() and rows[3].tolist() == base[0].tolist() and rows[4].tolist() == base[1].tolist()


def test_layout_rows_become_sets():
    """Decode: one set for the whole batch, loaded by the causal rows, used by the proposal rows; padding
    neither. Training: mask block i of sequence s uses the clean rows i*b-1 .. i*b+b-2 of s."""
    layout = BatchLayout("decode", 4, (0, 2), (7, 3), (3, 2), (11, 6))
    r = draft_restriction(layout, 12, "cpu", 1)
    assert r.groups == 1 and r.extra == 1
    assert r.source.view(2, 12).tolist() == [[0] * 3 + [-1] * 9, [0] * 2 + [-1] * 10]
    assert r.group.view(2, 12).tolist() == [[-1] * 3 + [0] * 8 + [-1], [-1] * 2 + [0] * 4 + [-1] * 6]
    train = draft_restriction(BatchLayout.training(2, 8, 4), 16, "cpu")
    assert train.groups == 4
    assert train.source.view(2, 16)[1].tolist() == [2, 2, 2, 3, 3, 3, 3, -1] + [-1] * 8
    assert train.group.view(2, 16)[0].tolist() == [-1] * 8 + [0] * 4 + [1] * 4


def test_budget_needs_a_layout(moe16):
    with pytest.raises(ZdiffError, match="draft_expert_budget"):
        moe16(torch.tensor([[1, 2, 3]]), draft_expert_budget=0)
    with pytest.raises(ZdiffError, match="draft_expert_budget"):
        moe16(torch.tensor([[1, 2, 3]]), layout=BatchLayout.training(1, 3, 4, diffusion=False),
              draft_expert_budget=-1)


def test_greedy_tidar_with_budget_equals_greedy_ar():
    spec = parse_spec(VOCAB8_MOE16)
    model = init_weights(Transformer(spec.model), seed=4, std=0.6).eval()  # varied text, drafts accepted
    prompts = [[1, 2, 3, 4, 5], [6], [2, 2, 4, 1, 0, 3, 5, 6, 1]]
    greedy = SamplingParams(sampler="greedy")
    ar = generate(model, prompts, greedy, diffusion=spec.diffusion, mode="ar", max_new_tokens=15)
    free = generate(model, prompts, greedy, diffusion=spec.diffusion, mode="tidar", max_new_tokens=15)
    model.forward = functools.partial(Transformer.forward, model, draft_expert_budget=0)
    held = generate(model, prompts, greedy, diffusion=spec.diffusion, mode="tidar", max_new_tokens=15)
    assert held.tokens == ar.tokens
    assert sum(map(sum, held.accepted)) > 0  # drafts were accepted: the commit paths ran
    assert held.accepted != free.accepted  # the budget changed the drafts


def _training_loss(model, ids, budget):
    """The TiDAR training forward (zdiff.train.objective's layout) and a float64 cross-entropy of all rows."""
    S = ids.shape[1] // 2
    pattern = training_pattern(S, MOE16.diffusion.block_size)
    out = model(ids, positions=pattern.positions(), predecessors=pattern.predecessors(),
                visible=pattern.dense_mask(), return_routings=True,
                layout=BatchLayout.training(len(ids), S, MOE16.diffusion.block_size, draft_expert_budget=budget))
    logits = out.hidden @ out.head.t()  # float64 (ForwardOutput.logits rounds to fp32)
    labels = torch.roll(ids, -1, dims=1)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())


def _directional_derivatives(model, ids, budget, eps=1e-6):
    """(central difference, autograd) of the training loss along one fixed random direction of every weight."""
    params = list(model.parameters())
    grads = torch.autograd.grad(_training_loss(model, ids, budget), params)
    gen = torch.Generator().manual_seed(1)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    losses = []
    with torch.no_grad():
        for sign in (1, -1):
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
            losses.append(_training_loss(model, ids, budget).item())
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
    return (losses[0] - losses[1]) / (2 * eps), sum((g * d).sum() for g, d in zip(grads, direction)).item()


def test_budget_aware_training_loss_has_the_right_gradient(moe16):
    """Training under the budget (mask block i routes among the experts its verify window chose): the directional
    derivative of the loss by central differences equals autograd's. The model keeps its residual stream in fp32
    even with float64 weights, which limits a difference quotient to about 1e-3 relative (the free loss shows the
    same); the budget's derivative is 25% away from the free one, so the check still tells them apart."""
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    ids[:, 16:] = MOE16.diffusion.mask_token_id
    numeric, analytic = _directional_derivatives(moe16, ids, 0)
    free_numeric, free_analytic = _directional_derivatives(moe16, ids, None)
    assert numeric == pytest.approx(analytic, rel=5e-3)
    assert free_numeric == pytest.approx(free_analytic, rel=5e-3)
    assert abs(analytic - free_analytic) > 0.1 * abs(free_analytic)  # the budget really changed the loss


def test_train_refuses_a_budget_without_tidar(tmp_path):
    from conftest import run_cli

    result = run_cli("train", "zaya1-tiny", "--mode", "ar", "--steps", "1", "--out", str(tmp_path / "run"),
                     "--draft-expert-budget", "0")
    assert result.returncode == 2 and "--draft-expert-budget must be at least 0 with --mode tidar" in result.stderr


def _per_sequence_restriction(layout, rows, device, extra=0):
    """The budget with one allowed set per sequence (its own verify rows): the batch-wide union of
    `draft_restriction` would allow every expert in a batch of thousands, so the exactness test uses this
    stricter (equally lossless) variant to give the budget teeth."""
    _, causal, valid = layout.tensors(device)
    t = torch.arange(rows, device=device)
    seq = torch.arange(len(valid), device=device)[:, None]
    live = t[None, :] < valid[:, None].long()
    verify = live & (t[None, :] < causal[:, None].long())
    group = torch.where(live & ~verify, seq, -1).reshape(-1)
    return ExpertRestriction(group, len(valid), torch.where(verify, seq, -1).reshape(-1), extra)


def test_lossless_tidar_with_budget_matches_exact_ar_distribution(monkeypatch):
    """Three new tokens from a prompt, 4000 samples under the budget (per-sequence sets): the chi-square test
    against exact enumeration of AR sampling passes, while the drafts really changed (fewer tokens per forward
    than without the budget) and a broken verifier under the same budget fails (power)."""
    from generation_helpers import chi_square_p_value, counts_against, exact_ar_distribution
    from zdiff.generation.oracle import loop as loop_module
    from zdiff.generation.oracle import sampling
    from zdiff.runtime import model as model_module

    spec = parse_spec(VOCAB8_MOE16)
    model = init_weights(Transformer(spec.model), seed=4, std=0.6).eval()
    prompt, n = [1, 2, 3], 4000
    with torch.no_grad():
        table = exact_ar_distribution(model, prompt, 3, SamplingParams(sampler="lossless", banned=(7,)))

    def sample():
        return generate(model, [prompt] * n, SamplingParams(sampler="lossless"), diffusion=spec.diffusion,
                        mode="tidar", max_new_tokens=3, seed=11)
    free = sample()
    monkeypatch.setattr(model_module, "draft_restriction", _per_sequence_restriction)
    model.forward = functools.partial(Transformer.forward, model, draft_expert_budget=0)
    held = sample()
    assert sum(held.forward_passes) < 3 * n  # drafts were accepted
    assert sum(held.forward_passes) != sum(free.forward_passes)  # and the budget changed them
    counts, probs = counts_against(held.tokens, table)
    assert chi_square_p_value(counts, probs) > 1e-3

    def accept_all(target, q, drafts, uniforms, gumbel):
        m = drafts.shape[0]
        return m, int(sampling.gumbel_argmax(target[m], gumbel[m]))
    monkeypatch.setattr(loop_module, "verify_stochastic", accept_all)
    counts, probs = counts_against(sample().tokens, table)
    assert chi_square_p_value(counts, probs) < 1e-6
