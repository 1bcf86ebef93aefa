"""The fused Triton verifier against the reference verifier, draw for draw (one sampler for a batch, and
every slot with its own sampler, top-k / top-p included); its keyed draws equal the torch backend's token
for token (every sampler, filtered or not, many seeds and positions, model-dtype logits), are distributed
exactly and do not depend on the slot or the batch; the split-vocabulary kernels over several split counts
(empty splits, poisoned workspaces); ahead-of-time compilation for every GPU target."""

import pytest
import torch

from conftest import DEVICE
from generation_helpers import chi_square_p_value
from zdiff.errors import ZdiffError
from zdiff.generation.batched_sampling import KIND_CODES
from zdiff.generation.oracle import sampling
from zdiff.generation.verify import check_draft_ids, verify_slots
from zdiff.generation.vocab_kernels import MAX_SAMPLE_SPLITS, MAX_STATS_SPLITS, vocab_splits
from zdiff.sampler import SamplingParams


def _case(B, M, V, kind, seed, **filters):
    gen = torch.Generator().manual_seed(seed)
    params = SamplingParams(sampler=kind, mix_weight=0.4 if kind == "logit_mix" else 1.0, temperature=0.8, banned=(7,),
                            **filters)
    ar = torch.randn(B, M + 1, V, generator=gen) * 2
    # half of the rows draft close to the target so that acceptances happen, half far from it
    near = torch.rand(B, M, 1, generator=gen) < 0.5
    close, far = ar[:, :M] + 0.3 * torch.randn(B, M, V, generator=gen), torch.randn(B, M, V, generator=gen) * 2
    draft = torch.where(near, close, far)
    q = sampling.probabilities(draft, params)
    drafts = (torch.stack([torch.multinomial(q[b], 1, generator=gen).squeeze(-1) for b in range(B)]) if M
              else torch.zeros(B, 0, dtype=torch.long))
    if kind == "greedy":
        drafts = torch.where(near.squeeze(-1), sampling.processed_logits(ar[:, :M], params).argmax(-1), drafts)
    num = torch.randint(0, M + 1, (B,), generator=gen)
    num[0] = M
    uniforms = torch.rand(B, M, generator=gen)
    gumbel = sampling.draw_gumbel((B, M + 1, V), gen)
    return params, ar, draft, q, drafts, num, uniforms, gumbel


def _per_slot(params: SamplingParams, B: int) -> dict:
    return dict(kind=torch.full((B,), KIND_CODES[params.sampler]), temperature=torch.full((B,), params.temperature),
                top_k=torch.full((B,), params.top_k), top_p=torch.full((B,), params.top_p),
                mix_weight=torch.full((B,), params.mix_weight))


def fused_verify(ar, draft, drafts, num, params, uniforms=None, gumbel=None, seed=0, backend="fused", **launch):
    """The engine's verifier with every slot on `params` (one banned id), given draws or keyed on `seed` with
    slot b's rows at positions b (M + 1) + i."""
    B, M = drafts.shape
    filtered = bool(params.top_k) or params.top_p < 1.0
    given = None if uniforms is None else (uniforms, gumbel)
    return _verify_slots(ar, draft, drafts, num, _per_slot(params, B), torch.full((B,), seed),
                         torch.arange(B) * (M + 1), filtered, params.banned[0] if params.banned else -1,
                         given=given, backend=backend, **launch)


@pytest.mark.parametrize("kind", ["lossless", "logit_mix", "greedy"])
@pytest.mark.parametrize("B,M,V,block_v", [(9, 3, 50, 16), (5, 5, 37, 64), (3, 0, 21, 8)])
def test_fused_verifier_equals_reference_draw_for_draw(kind, B, M, V, block_v):
    params, ar, draft, q, drafts, num, uniforms, gumbel = _case(B, M, V, kind, seed=B * 100 + M)
    to = dict(device=DEVICE)
    accepted, token = fused_verify(ar.to(**to), draft.to(**to), drafts.to(**to), num.to(**to), params,
                                   uniforms=uniforms.to(**to), gumbel=gumbel.to(**to), block_v=block_v)
    outcomes = set()
    for b in range(B):
        m = int(num[b])
        target = sampling.target_probs(ar[b, : m + 1], draft[b, :m], params)
        if kind == "greedy":
            expected = sampling.verify_greedy(target, drafts[b, :m])
        else:
            expected = sampling.verify_stochastic(target, q[b, :m], drafts[b, :m], uniforms[b, :m], gumbel[b, : m + 1])
        assert (int(accepted[b]), int(token[b])) == expected, (kind, b, m)
        assert int(token[b]) != 7  # the banned mask id is never produced
        outcomes.add(expected[0] == m)
    if M:
        assert outcomes == {True, False} or B < 4  # both the bonus and the rejection paths ran


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("filtered", [False, True])
def test_keyed_kernels_equal_the_torch_backend_token_for_token(filtered, dtype):
    """One randomness scheme: with the draws keyed in the kernels (acceptance uniforms, Gumbel noise of the
    resample and of the bonus draw), the kernels and the torch backend return the same (accepted, token) for
    every slot: 3 seeds x 12 slots cycling through every sampler (with top-k / top-p when filtered), each
    at its own position, logits in the model dtype (fp16 read as it is)."""
    S, M, V = 12, 3, 40
    outcomes = set()
    for seed in range(3):
        params, ar, draft, _, drafts, num, tensors = _slot_case(S, M, V, seed=40 + seed)
        if not filtered:
            tensors = {**tensors, "top_k": torch.zeros(S, dtype=torch.long), "top_p": torch.ones(S)}
        ar, draft = ar.to(dtype), draft.to(dtype)
        seeds = torch.randint(0, 2**62, (S,), generator=torch.Generator().manual_seed(seed))
        positions = torch.randint(0, 2**40, (S,), generator=torch.Generator().manual_seed(seed + 9))
        kernels = _verify_slots(ar, draft, drafts, num, tensors, seeds, positions, filtered, block_v=16,
                                stats_splits=2, sample_splits=3)
        reference = _verify_slots(ar, draft, drafts, num, tensors, seeds, positions, filtered, backend="torch")
        assert kernels[0].tolist() == reference[0].tolist() and kernels[1].tolist() == reference[1].tolist()
        assert kernels[0].dtype == kernels[1].dtype == torch.int64
        outcomes |= {(params[s].sampler, int(reference[0][s]) == int(num[s])) for s in range(S)}
        other = _verify_slots(ar, draft, drafts, num, tensors, seeds + 1, positions, filtered, backend="torch")
        assert not torch.equal(other[1], reference[1])  # the seed matters: the comparison can fail
    assert {k for k, _ in outcomes} == {"lossless", "logit_mix", "greedy"} and {a for _, a in outcomes} == {True, False}


@pytest.mark.parametrize("kind", ["lossless", "logit_mix", "greedy"])
def test_fused_verifier_applies_top_k_top_p_draw_for_draw(kind):
    """Top-k and top-p (a sort, done on the device before the kernels) change the outcome, exactly as the
    reference's filtered p and q do."""
    B, M, V = 8, 3, 40
    params, ar, draft, q, drafts, num, uniforms, gumbel = _case(B, M, V, kind, seed=17, top_k=6, top_p=0.8)
    accepted, token = fused_verify(ar.to(DEVICE), draft.to(DEVICE), drafts.to(DEVICE), num.to(DEVICE), params,
                                   uniforms=uniforms.to(DEVICE), gumbel=gumbel.to(DEVICE), block_v=16)
    differs = False
    for b in range(B):
        expected = _expected(kind, params, ar, draft, q, drafts, num, uniforms, gumbel, b)
        assert (int(accepted[b]), int(token[b])) == expected, (kind, b)
        m = int(num[b])
        target = sampling.target_probs(ar[b, : m + 1], draft[b, :m], params)
        assert target[expected[0], expected[1]] > 0  # a token inside the filtered set of its row
        unfiltered = SamplingParams(sampler=kind, mix_weight=params.mix_weight, temperature=0.8, banned=(7,))
        q_plain = sampling.probabilities(draft, unfiltered)
        differs |= _expected(kind, unfiltered, ar, draft, q_plain, drafts, num, uniforms, gumbel, b) != expected
    assert differs or kind == "greedy"  # the filters mattered in this case (greedy: argmax is always kept)


def _expected(kind, params, ar, draft, q, drafts, num, uniforms, gumbel, b):
    m = int(num[b])
    target = sampling.target_probs(ar[b, : m + 1], draft[b, :m], params)
    if kind == "greedy":
        return sampling.verify_greedy(target, drafts[b, :m])
    return sampling.verify_stochastic(target, q[b, :m], drafts[b, :m], uniforms[b, :m], gumbel[b, : m + 1])


@pytest.mark.parametrize("kind", ["lossless", "logit_mix", "greedy"])
@pytest.mark.parametrize("stats_splits,sample_splits", [(3, 2), (5, 7), (12, 16)])
def test_split_verifier_equals_reference_for_several_splits(kind, stats_splits, sample_splits, poison_allocations,
                                                            monkeypatch):
    """V = 50 in chunks of 8 = 7 chunks: 3 splits do not divide them, 5 leave the last split empty,
    12 and 16 are more splits than chunks. Every workspace starts as NaN / -7 (poison_allocations)."""
    allocated = []
    poisoned_empty = torch.empty

    def recording_empty(*args, **kwargs):
        t = poisoned_empty(*args, **kwargs)
        poisoned = bool(t.isnan().all()) if t.is_floating_point() else bool((t == -7).all())
        allocated.append((tuple(t.shape), t.dtype, poisoned))
        return t

    monkeypatch.setattr(torch, "empty", recording_empty)
    B, M, V = 6, 4, 50
    params, ar, draft, q, drafts, num, uniforms, gumbel = _case(B, M, V, kind, seed=31 + stats_splits)
    to = dict(device=DEVICE)
    accepted, token = fused_verify(ar.to(**to), draft.to(**to), drafts.to(**to), num.to(**to), params,
                                   uniforms=uniforms.to(**to), gumbel=gumbel.to(**to), block_v=8,
                                   stats_splits=stats_splits, sample_splits=sample_splits)
    # the partial statistics and the per-split keys were poisoned workspaces
    assert ((B * M, 4, stats_splits), torch.float32, True) in allocated
    assert ((B, 2, sample_splits), torch.float32, True) in allocated
    outcomes = set()
    for b in range(B):
        expected = _expected(kind, params, ar, draft, q, drafts, num, uniforms, gumbel, b)
        assert (int(accepted[b]), int(token[b])) == expected, (kind, b, int(num[b]))
        outcomes.add(expected[0] == int(num[b]))
    assert outcomes == {True, False}  # both the bonus and the rejection paths ran


def _slot_case(S, M, V, seed):
    """S slots cycling through the samplers, each with its own temperature, mix weight, top-k and top-p."""
    gen = torch.Generator().manual_seed(seed)
    kinds = [("lossless", "logit_mix", "greedy")[s % 3] for s in range(S)]
    params = [SamplingParams(sampler=k, mix_weight=0.2 + 0.6 * float(torch.rand(1, generator=gen)),
                             temperature=0.6 + float(torch.rand(1, generator=gen)), banned=(7,),
                             top_k=(0, 5, 0, 9)[s % 4], top_p=(1.0, 1.0, 0.85, 0.9)[s % 4])
              for s, k in enumerate(kinds)]
    ar = torch.randn(S, M + 1, V, generator=gen) * 2
    near = torch.rand(S, M, 1, generator=gen) < 0.6
    close, far = ar[:, :M] + 0.3 * torch.randn(S, M, V, generator=gen), torch.randn(S, M, V, generator=gen)
    draft = torch.where(near, close, far)
    q = torch.stack([sampling.probabilities(draft[s], params[s]) for s in range(S)])
    drafts = torch.stack([torch.multinomial(q[s], 1, generator=gen).squeeze(-1) for s in range(S)])
    num = torch.randint(0, M + 1, (S,), generator=gen)
    tensors = dict(kind=torch.tensor([KIND_CODES[p.sampler] for p in params]),
                   temperature=torch.tensor([p.temperature for p in params]),
                   top_k=torch.tensor([p.top_k for p in params]), top_p=torch.tensor([p.top_p for p in params]),
                   mix_weight=torch.tensor([p.mix_weight for p in params]))
    return params, ar, draft, q, drafts, num, tensors


def _verify_slots(ar, draft, drafts, num, tensors, seed, first_position, filtered, banned_id=7, backend="fused",
                  given=None, **kw):
    to = {k: v.to(DEVICE) for k, v in tensors.items()}
    given = None if given is None else tuple(g.to(DEVICE) for g in given)
    return verify_slots(backend, ar.to(DEVICE), draft.to(DEVICE), drafts.to(DEVICE), num.to(DEVICE),
                        first_position.to(DEVICE), to["kind"], to["temperature"].float(), to["top_k"],
                        to["top_p"].float(), to["mix_weight"].float(), seed.to(DEVICE), banned_id, filtered,
                        given=given, **kw)


def test_every_slot_verifies_with_its_own_sampler_draw_for_draw():
    """One launch over 12 slots with different samplers, temperatures, mix weights, top-k and top-p equals
    the reference verifier run slot by slot with that slot's parameters (given noise)."""
    S, M, V = 12, 3, 40
    params, ar, draft, q, drafts, num, tensors = _slot_case(S, M, V, seed=5)
    gen = torch.Generator().manual_seed(6)
    uniforms, gumbel = torch.rand(S, M, generator=gen), sampling.draw_gumbel((S, M + 1, V), gen)
    accepted, token = _verify_slots(ar, draft, drafts, num, tensors, torch.zeros(S, dtype=torch.long),
                                    torch.zeros(S, dtype=torch.long), True, given=(uniforms, gumbel), block_v=16)
    outcomes = set()
    for s in range(S):
        expected = _expected(params[s].sampler, params[s], ar, draft, q, drafts, num, uniforms, gumbel, s)
        assert (int(accepted[s]), int(token[s])) == expected, (s, params[s])
        outcomes.add((params[s].sampler, expected[0] == int(num[s])))
    assert {k for k, _ in outcomes} == {"lossless", "logit_mix", "greedy"} and {a for _, a in outcomes} == {True, False}
    # unfiltered slots take the fused temperature / mix path: the same outcome as the reference too
    plain = {**tensors, "top_k": torch.zeros(S, dtype=torch.long), "top_p": torch.ones(S)}
    accepted, token = _verify_slots(ar, draft, drafts, num, plain, torch.zeros(S, dtype=torch.long),
                                    torch.zeros(S, dtype=torch.long), False, given=(uniforms, gumbel), block_v=16)
    for s in range(S):
        p = SamplingParams(sampler=params[s].sampler, mix_weight=params[s].mix_weight,
                           temperature=params[s].temperature, banned=(7,))
        q_plain = sampling.probabilities(draft, p)
        assert (int(accepted[s]), int(token[s])) == _expected(p.sampler, p, ar, draft, q_plain, drafts, num, uniforms,
                                                               gumbel, s), s


def test_keyed_draws_do_not_depend_on_the_slot_or_the_batch():
    """The in-kernel draws of a slot are keyed on its seed and token positions: permuting the slots, or
    verifying a slot alone, gives it the same outcome; another seed gives other outcomes."""
    S, M, V = 10, 3, 45
    params, ar, draft, q, drafts, num, tensors = _slot_case(S, M, V, seed=8)
    seeds, positions = torch.arange(S) * 1000 + 3, torch.arange(S) * 7 + 20
    base = _verify_slots(ar, draft, drafts, num, tensors, seeds, positions, True, block_v=16)
    perm = torch.randperm(S, generator=torch.Generator().manual_seed(0))
    permuted = _verify_slots(ar[perm], draft[perm], drafts[perm], num[perm], {k: v[perm] for k, v in tensors.items()},
                             seeds[perm], positions[perm], True, block_v=16, stats_splits=3, sample_splits=2)
    assert torch.equal(permuted[0].cpu(), base[0].cpu()[perm]) and torch.equal(permuted[1].cpu(), base[1].cpu()[perm])
    one = slice(4, 5)
    alone = _verify_slots(ar[one], draft[one], drafts[one], num[one], {k: v[one] for k, v in tensors.items()},
                          seeds[one], positions[one], True, block_v=16)
    assert (int(alone[0][0]), int(alone[1][0])) == (int(base[0][4]), int(base[1][4]))
    reseeded = _verify_slots(ar, draft, drafts, num, tensors, seeds + 1, positions, True, block_v=16)
    assert not torch.equal(reseeded[1].cpu(), base[1].cpu())  # the comparison can fail


@pytest.mark.parametrize("backend", ["fused", "torch"])
def test_keyed_slot_draws_are_distributed_exactly_with_top_k_top_p(backend):
    """400 slots with their own seeds, one draft each, V = 6, top-k 4 and top-p 0.8: the joint law of
    (accepted, token) is known exactly from the filtered p and q; the same test rejects resampling from
    p instead of the residual, and the unfiltered law."""
    S, V, d = 400, 6, 1
    filters = dict(top_k=4, top_p=0.8)
    ar = torch.tensor([[1.0, 0.6, -1.0, 0.5, 0.3, -0.2], [0.2, 1.5, -0.5, 0.0, 0.9, 0.1]])
    draft = torch.tensor([[0.05, 1.0, 0.0, 0.4, -0.3, 0.2]])  # no tie at the top-k threshold: both filters cut
    params = SamplingParams(sampler="lossless", **filters)
    p0, p1 = sampling.probabilities(ar[0], params), sampling.probabilities(ar[1], params)
    q = sampling.probabilities(draft[0], params)
    accept = min(1.0, (p0[d] / q[d]).item())
    residual = (p0 - q).clamp_min(0)
    residual /= residual.sum()
    expected = torch.cat([(1 - accept) * residual, accept * p1])
    tensors = dict(kind=torch.zeros(S, dtype=torch.long), temperature=torch.ones(S),
                   top_k=torch.full((S,), params.top_k), top_p=torch.full((S,), params.top_p), mix_weight=torch.ones(S))
    acc, tok = _verify_slots(ar.expand(S, 2, V).contiguous(), draft.expand(S, 1, V).contiguous(),
                             torch.full((S, 1), d), torch.ones(S, dtype=torch.long), tensors, torch.arange(S) + 77,
                             torch.full((S,), 5), True, banned_id=-1, backend=backend)
    counts = torch.zeros(2 * V)
    for a, t in zip(acc.tolist(), tok.tolist()):
        counts[a * V + t] += 1
    assert chi_square_p_value(counts, expected) > 1e-3
    assert (p0 == 0).sum() >= 2 and (q == 0).sum() >= 2  # both filters cut something
    wrong = torch.cat([(1 - accept) * p0, accept * p1])
    assert chi_square_p_value(counts, wrong) < 1e-3
    plain_p0, plain_q = torch.softmax(ar[0], -1), torch.softmax(draft[0], -1)
    plain_accept = min(1.0, (plain_p0[d] / plain_q[d]).item())
    plain_residual = (plain_p0 - plain_q).clamp_min(0)
    unfiltered = torch.cat([(1 - plain_accept) * plain_residual / plain_residual.sum(),
                            plain_accept * torch.softmax(ar[1], -1)])
    assert chi_square_p_value(counts, unfiltered) < 1e-3


def test_split_verifier_rejects_a_banned_draft():
    """p(d) = q(d) = 0 for the banned mask id: the reference rejects such a draft, and so does the kernel."""
    B, M, V = 3, 2, 30
    params, ar, draft, q, drafts, num, uniforms, gumbel = _case(B, M, V, "lossless", seed=3)
    drafts[:, 0] = 7
    num[:] = M
    accepted, token = fused_verify(ar.to(DEVICE), draft.to(DEVICE), drafts.to(DEVICE), num.to(DEVICE), params,
                                   uniforms=uniforms.to(DEVICE), gumbel=gumbel.to(DEVICE), block_v=8, stats_splits=2)
    for b in range(B):
        assert (int(accepted[b]), int(token[b])) == _expected("lossless", params, ar, draft, q, drafts, num, uniforms,
                                                              gumbel, b) == (0, int(token[b]))


def test_vocab_splits_fill_the_device_without_empty_splits():
    V, block_v, sms = 262272, 1024, 132
    chunks = -(-V // block_v)
    for rows in (1, 15, 8 * 15, 32 * 15, 4096):
        for limit, least in ((MAX_STATS_SPLITS, 4), (MAX_SAMPLE_SPLITS, 2)):
            splits, per = vocab_splits(V, rows, sms, block_v, limit, least)
            assert 1 <= splits <= limit and per >= least
            assert (splits - 1) * per < chunks <= splits * per  # every split has a chunk, all chunks covered
            if rows * chunks // least >= 8 * sms:
                assert rows * splits >= 4 * sms  # enough programs for every SM
    assert vocab_splits(V, 15, sms, block_v, MAX_STATS_SPLITS, 4)[0] > 32  # batch 1: the vocabulary is split
    assert vocab_splits(40, 15, sms, 8, MAX_STATS_SPLITS, 4) == (2, 3)  # 5 chunks, at least 4 per split: 2 of 3
    with pytest.raises(ValueError, match="splits must be in"):
        fused_verify(torch.zeros(1, 2, 4), torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.long),
                     torch.ones(1, dtype=torch.long), SamplingParams(), stats_splits=MAX_STATS_SPLITS + 1)


AOT_SCRIPT = """
import json, warnings
warnings.simplefilter("ignore")
from zdiff.codegen.aot import AOT_TARGETS, check_fits, compile_for_target
from zdiff.generation import draft_sampling, filter_kernel, verifier_kernel
reports = []
kernels = (verifier_kernel.aot_kernels(given_noise=False, logits="bf16")
           + verifier_kernel.aot_kernels(given_noise=False, logits="fp32", processed=True)
           + draft_sampling.aot_kernels(logits="bf16") + draft_sampling.aot_kernels(logits="fp32", processed=True)
           + filter_kernel.aot_kernels(logits="bf16"))
for target in sorted(AOT_TARGETS):
    for name, kernel, signature, constexprs, warps in kernels:
        _, report = compile_for_target(kernel, signature, constexprs, target, num_warps=warps)
        check_fits(report, f"{constexprs} num_warps={warps}")
        reports.append(report.to_dict())
print(json.dumps(reports))
"""


def test_fused_verifier_and_draft_sampler_compile_ahead_of_time_without_spills():
    """Real compilation (not the interpreter), so it runs in a process without TRITON_INTERPRET: the verifier's
    and the draft sampler's kernels on bf16 logits (the model dtype) and on fp32 filtered logits, and the top-k /
    top-p filter kernel on bf16 logits."""
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
    assert {(r["target"], r["arch"]) for r in reports} == {("h100", "sm_90"), ("h200", "sm_90"),
                                                           ("mi300x", "gfx942"), ("mi355x", "gfx950")}
    kernels = {"verify_stats_kernel", "verify_sample_kernel", "verify_finish_kernel", "draft_sample_kernel",
               "draft_pick_kernel", "draft_rows_kernel"}
    assert {r["kernel"] for r in reports} == kernels | {"filter_logits_kernel"}
    # every target, both logits types (the sampler is per slot); the filter reads the model dtype only
    assert len(reports) == 4 * (2 * len(kernels) + 1)
    for r in reports:
        assert r["spills"] == 0 and r["registers"] > 0 and r["binary_bytes"] > 1000 and r["occupancy"] >= 1, r


@pytest.mark.parametrize("kind,mix", [("lossless", 1.0), ("logit_mix", 1.0), ("logit_mix", 0.0), ("logit_mix", 0.5)])
def test_masked_logits_are_exact_not_nan(kind, mix):
    """Logits of -inf (top-k / banned masks applied by a caller) in the target and the drafts: the fused
    verifier must not form 0 * -inf (which made every draft pass); it equals the reference draw for draw."""
    B, M, V = 6, 3, 40
    params, ar, draft, _, drafts, num, uniforms, gumbel = _case(B, M, V, "lossless", seed=7)
    params = SamplingParams(sampler=kind, mix_weight=mix, temperature=0.8, banned=(7,))
    masked = torch.rand(B, M + 1, V, generator=torch.Generator().manual_seed(3)) < 0.4
    masked[..., :3] = False  # keep a few ids alive in every row
    ar = ar.masked_fill(masked, float("-inf"))
    draft = draft.masked_fill(masked[:, :M], float("-inf"))
    q = sampling.probabilities(draft, params)
    drafts = torch.stack([torch.multinomial(q[b], 1).squeeze(-1) for b in range(B)])
    to = dict(device=DEVICE)
    accepted, token = fused_verify(ar.to(**to), draft.to(**to), drafts.to(**to), num.to(**to), params,
                                   uniforms=uniforms.to(**to), gumbel=gumbel.to(**to), block_v=16)
    for b in range(B):
        m = int(num[b])
        target = sampling.target_probs(ar[b, : m + 1], draft[b, :m], params)
        assert torch.isfinite(target).all()
        expected = sampling.verify_stochastic(target, q[b, :m], drafts[b, :m], uniforms[b, :m], gumbel[b, : m + 1])
        assert (int(accepted[b]), int(token[b])) == expected, (kind, mix, b)
        assert not masked[b, int(accepted[b]), int(token[b])]  # never a masked id


@pytest.mark.parametrize("bad", [-1, 40, 41])
def test_draft_ids_outside_the_vocabulary_are_refused(bad):
    B, M, V = 3, 2, 40
    params, ar, draft, q, drafts, num, uniforms, gumbel = _case(B, M, V, "lossless", seed=9)
    num[:] = M
    drafts[1, 1] = bad
    with pytest.raises(ZdiffError, match=r"drafts: ids must be in \[0, 40\)"):
        check_draft_ids(drafts.to(DEVICE), num.to(DEVICE), V)
    target = sampling.target_probs(ar[1], draft[1], params)
    with pytest.raises(ZdiffError, match=r"drafts: ids must be in \[0, 40\)"):
        sampling.verify_stochastic(target, q[1], drafts[1], uniforms[1], gumbel[1])
    num[1] = 1  # a padded entry past num_drafts is not a draft: no error
    check_draft_ids(drafts.to(DEVICE), num.to(DEVICE), V)
