"""The fused Triton verifier against the reference verifier, draw for draw; its own RNG
statistically; the split-vocabulary kernels over several split counts (empty splits, poisoned
workspaces) and against the per-sequence kernel; ahead-of-time compilation for every GPU target."""

import pytest
import torch

from conftest import DEVICE
from generation_helpers import chi_square_p_value
from zdiff.errors import ZdiffError
from zdiff.generation import sampling
from zdiff.generation.sampling import SamplingParams
from zdiff.generation.verifier_kernel import (MAX_SAMPLE_SPLITS, MAX_STATS_SPLITS, fused_verify,
                                            fused_verify_per_sequence, vocab_splits)


def _case(B, M, V, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    params = SamplingParams(kind=kind, mix_weight=0.4 if kind == "logit_mix" else 1.0, temperature=0.8, banned=(7,))
    ar = torch.randn(B, M + 1, V, generator=gen) * 2
    # half of the rows draft close to the target so that acceptances happen, half far from it
    near = torch.rand(B, M, 1, generator=gen) < 0.5
    draft = torch.where(near, ar[:, :M] + 0.3 * torch.randn(B, M, V, generator=gen), torch.randn(B, M, V, generator=gen) * 2)
    q = sampling.probabilities(draft, params)
    drafts = torch.stack([torch.multinomial(q[b], 1, generator=gen).squeeze(-1) for b in range(B)]) if M else torch.zeros(B, 0, dtype=torch.long)
    if kind == "greedy":
        drafts = torch.where(near.squeeze(-1), sampling.processed_logits(ar[:, :M], params).argmax(-1), drafts)
    num = torch.randint(0, M + 1, (B,), generator=gen)
    num[0] = M
    uniforms = torch.rand(B, M, generator=gen)
    gumbel = sampling.draw_gumbel((B, M + 1, V), gen)
    return params, ar, draft, q, drafts, num, uniforms, gumbel


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


def test_fused_verifier_rng_is_distributed_correctly():
    """In-kernel Philox draws: one draft, V = 4: the joint law of (accepted, token) is known exactly."""
    V, B = 4, 400
    params = SamplingParams(kind="lossless")
    ar = torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.2, 1.5, -0.5, 0.0]])
    draft = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    p0, p1 = torch.softmax(ar[0], -1), torch.softmax(ar[1], -1)
    q = torch.softmax(draft[0], -1)
    d = 1
    accept = min(1.0, (p0[d] / q[d]).item())
    residual = (p0 - q).clamp_min(0)
    residual /= residual.sum()
    expected = torch.cat([(1 - accept) * residual, accept * p1])  # (rejected, token) then (accepted, bonus)
    acc, tok = fused_verify(ar.expand(B, 2, V).contiguous().to(DEVICE), draft.expand(B, 1, V).contiguous().to(DEVICE),
                            torch.full((B, 1), d, device=DEVICE), torch.ones(B, dtype=torch.long, device=DEVICE),
                            params, seed=1234)
    counts = torch.zeros(2 * V)
    for a, t in zip(acc.tolist(), tok.tolist()):
        counts[a * V + t] += 1
    assert chi_square_p_value(counts, expected) > 1e-3
    wrong = torch.cat([(1 - accept) * p0, accept * p1])  # resampling from p instead of the residual
    assert chi_square_p_value(counts, wrong) < 1e-3


def test_fused_verifier_refuses_top_k():
    with pytest.raises(ZdiffError, match="does not apply top-k"):
        fused_verify(torch.zeros(1, 1, 4), torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.long),
                     torch.zeros(1, dtype=torch.long), SamplingParams(top_k=2))


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
        allocated.append((tuple(t.shape), t.dtype, bool(t.isnan().all()) if t.is_floating_point() else bool((t == -7).all())))
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


@pytest.mark.parametrize("kind", ["lossless", "logit_mix"])
def test_split_verifier_draws_as_the_per_sequence_kernel(kind):
    """In-kernel Philox noise: the split kernels make the same draws as the one-program-per-sequence kernel."""
    B, M, V = 8, 3, 45
    params, ar, draft, q, drafts, num, _, _ = _case(B, M, V, kind, seed=7)
    args = [t.to(DEVICE) for t in (ar, draft, drafts, num)]
    base = fused_verify_per_sequence(*args, params, seed=99, block_v=8)
    outcomes = set()
    for splits in [(None, None), (4, 3)]:
        split = fused_verify(*args, params, seed=99, block_v=8, stats_splits=splits[0], sample_splits=splits[1])
        assert torch.equal(split[0].cpu(), base[0].cpu()) and torch.equal(split[1].cpu(), base[1].cpu()), splits
        outcomes |= {int(a) == int(m) for a, m in zip(split[0].cpu(), num)}
    assert outcomes == {True, False}
    other_seed = fused_verify(*args, params, seed=100, block_v=8, stats_splits=4, sample_splits=3)
    assert not torch.equal(other_seed[1].cpu(), base[1].cpu())  # the comparison can fail


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
from zdiff.generation.verifier_kernel import aot_kernels, aot_signature, fused_verify_kernel
reports = []
for target in sorted(AOT_TARGETS):
    for greedy in (False, True):
        signature, constexprs = aot_signature(given_noise=False, greedy=greedy)
        _, report = compile_for_target(fused_verify_kernel, signature, constexprs, target, num_warps=4)
        check_fits(report, "BLOCK_V=1024 num_warps=4")
        reports.append(report.to_dict())
        for name, kernel, signature, constexprs, warps in aot_kernels(given_noise=False, greedy=greedy):
            _, report = compile_for_target(kernel, signature, constexprs, target, num_warps=warps)
            check_fits(report, f"{constexprs} num_warps={warps}")
            reports.append(report.to_dict())
print(json.dumps(reports))
"""


def test_fused_verifier_compiles_ahead_of_time_without_spills():
    """Real compilation (not the interpreter), so it runs in a process without TRITON_INTERPRET."""
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
    kernels = {"fused_verify_kernel", "verify_stats_kernel", "verify_sample_kernel", "verify_finish_kernel"}
    assert {r["kernel"] for r in reports} == kernels
    assert len(reports) == 4 * 2 * len(kernels)  # every target, stochastic and greedy
    for r in reports:
        assert r["spills"] == 0 and r["registers"] > 0 and r["binary_bytes"] > 1000 and r["occupancy"] >= 1, r


@pytest.mark.parametrize("kind,mix", [("lossless", 1.0), ("logit_mix", 1.0), ("logit_mix", 0.0), ("logit_mix", 0.5)])
def test_masked_logits_are_exact_not_nan(kind, mix):
    """Logits of -inf (top-k / banned masks applied by a caller) in the target and the drafts: the fused
    verifier must not form 0 * -inf (which made every draft pass); it equals the reference draw for draw."""
    B, M, V = 6, 3, 40
    params, ar, draft, _, drafts, num, uniforms, gumbel = _case(B, M, V, "lossless", seed=7)
    params = SamplingParams(kind=kind, mix_weight=mix, temperature=0.8, banned=(7,))
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
        fused_verify(ar.to(DEVICE), draft.to(DEVICE), drafts.to(DEVICE), num.to(DEVICE), params)
    target = sampling.target_probs(ar[1], draft[1], params)
    with pytest.raises(ZdiffError, match=r"drafts: ids must be in \[0, 40\)"):
        sampling.verify_stochastic(target, q[1], drafts[1], uniforms[1], gumbel[1])
    num[1] = 1  # a padded entry past num_drafts is not a draft: no error
    fused_verify(ar.to(DEVICE), draft.to(DEVICE), drafts.to(DEVICE), num.to(DEVICE), params)
