"""The fused Triton verifier against the reference verifier, draw for draw; its own RNG
statistically; and ahead-of-time compilation for every GPU target."""

import pytest
import torch

from conftest import DEVICE
from generation_helpers import chi_square_p_value
from zdiff.errors import ZdiffError
from zdiff.generate import sampling
from zdiff.generate.sampling import SamplingParams
from zdiff.generate.verifier_kernel import fused_verify


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


AOT_SCRIPT = """
import json, warnings
warnings.simplefilter("ignore")
from zdiff.codegen.aot import AOT_TARGETS, check_fits, compile_for_target
from zdiff.generate.verifier_kernel import aot_signature, fused_verify_kernel
reports = []
for target in sorted(AOT_TARGETS):
    for greedy in (False, True):
        signature, constexprs = aot_signature(given_noise=False, greedy=greedy)
        _, report = compile_for_target(fused_verify_kernel, signature, constexprs, target, num_warps=4)
        check_fits(report, "BLOCK_V=1024 num_warps=4")
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
    for r in reports:
        assert r["spills"] == 0 and r["registers"] > 0 and r["binary_bytes"] > 1000 and r["occupancy"] >= 1, r
