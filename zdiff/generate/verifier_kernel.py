"""The fused speculative verifier: one Triton program per sequence, one pass over the logits.

For each verify row in order: softmax statistics of the target (AR logits, or the logit-mix
w*z_AR + (1-w)*z_draft) and of the draft distribution q over the vocabulary in chunks, the
acceptance test u*q(d) < p(d), and at the first rejection a Gumbel-max draw from
max(0, p - q) (falling back to p when that is all zero); if every draft is accepted, a
Gumbel-max bonus draw from the last row. No host synchronisation: accepted counts and
tokens stay on the device. Randomness is counter-based (tl.rand(seed, offset)), or given
explicitly (GIVEN_NOISE) so tests can compare it draw for draw with
`zdiff.generate.sampling.verify_stochastic`.

Glossary: B sequences; M = padded drafts per sequence (m_b <= M real ones); V vocabulary;
ar_logits (B, M+1, V) rows 0..m_b; draft_logits (B, M, V); drafts (B, M); outputs
accepted (B,) = n and token (B,) = the token placed at position L + n.
Top-k / top-p are not fused (they need a sort): callers use the reference path for them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import ZdiffError
from .sampling import SamplingParams

NEG_INF = tl.constexpr(float("-inf"))
TINY = tl.constexpr(1e-30)  # keeps tl.log away from 0 in discarded lanes; a normal fp32 (1e-38 made Triton 3.6 widen to fp64)


@triton.jit
def _target_and_draft(ar_row, draft_row, idx, V, banned_id, mix_weight, inv_temperature):
    """One vocabulary chunk of a verify row: target logits t and draft logits z_q, -inf outside."""
    valid = (idx < V) & (idx != banned_id)
    za = tl.load(ar_row + idx, mask=valid, other=0.0)
    zd = tl.load(draft_row + idx, mask=valid, other=0.0)
    t = tl.where(valid, (mix_weight * za + (1.0 - mix_weight) * zd) * inv_temperature, NEG_INF)
    zq = tl.where(valid, zd * inv_temperature, NEG_INF)
    return t, zq


@triton.jit
def _gumbel(gumbel_ptr, seed, offset, idx, V, GIVEN_NOISE: tl.constexpr):
    """Gumbel noise for one vocabulary chunk: given (tests) or from the counter-based RNG."""
    if GIVEN_NOISE:
        g = tl.load(gumbel_ptr + offset, mask=idx < V, other=0.0)
    else:
        u = tl.rand(seed, offset)
        g = -tl.log(-tl.log(tl.minimum(tl.maximum(u, 1e-7), 1.0 - 1e-7)))
    return g


@triton.jit
def fused_verify_kernel(
    ar_logits_ptr, draft_logits_ptr, drafts_ptr, num_drafts_ptr, uniforms_ptr, gumbel_ptr,
    accepted_ptr, token_ptr,
    seed, V, M, mix_weight, inv_temperature, banned_id,
    GIVEN_NOISE: tl.constexpr, GREEDY: tl.constexpr, BLOCK_V: tl.constexpr,
):
    b = tl.program_id(0)
    m = tl.load(num_drafts_ptr + b)
    ar_base = ar_logits_ptr + b * (M + 1) * V
    draft_base = draft_logits_ptr + b * M * V
    noise_base = b * (M + 1) * V  # Gumbel offsets of this sequence; acceptance uniforms come after all of them
    offs = tl.arange(0, BLOCK_V)
    accepted = m
    token = m * 0 - 1
    rejected = m * 0
    for i in range(0, M):
        if (i < m) & (rejected == 0):
            d = tl.load(drafts_ptr + b * M + i).to(tl.int32)
            # pass 1: online softmax statistics of the target t and of q
            max_t = tl.full((), NEG_INF, tl.float32)
            sum_t = tl.full((), 0.0, tl.float32)
            max_q = tl.full((), NEG_INF, tl.float32)
            sum_q = tl.full((), 0.0, tl.float32)
            best_t = tl.full((), NEG_INF, tl.float32)
            best_t_idx = m * 0
            for v0 in range(0, V, BLOCK_V):
                idx = v0 + offs
                t, zq = _target_and_draft(ar_base + i * V, draft_base + i * V, idx, V, banned_id, mix_weight,
                                          inv_temperature)
                chunk_max_t = tl.max(t, 0)
                new_max_t = tl.maximum(max_t, chunk_max_t)
                sum_t = sum_t * tl.exp(max_t - new_max_t) + tl.sum(tl.exp(t - new_max_t), 0)
                max_t = new_max_t
                new_max_q = tl.maximum(max_q, tl.max(zq, 0))
                sum_q = sum_q * tl.exp(max_q - new_max_q) + tl.sum(tl.exp(zq - new_max_q), 0)
                max_q = new_max_q
                chunk_arg = tl.argmax(t, 0)
                if chunk_max_t > best_t:
                    best_t = chunk_max_t
                    best_t_idx = v0 + chunk_arg
            za_d = tl.load(ar_base + i * V + d)
            zd_d = tl.load(draft_base + i * V + d)
            p_d = tl.exp((mix_weight * za_d + (1.0 - mix_weight) * zd_d) * inv_temperature - max_t) / sum_t
            q_d = tl.exp(zd_d * inv_temperature - max_q) / sum_q
            if GREEDY:
                keep = d == best_t_idx
            else:
                if GIVEN_NOISE:
                    u = tl.load(uniforms_ptr + b * M + i)
                else:
                    u = tl.rand(seed, tl.num_programs(0) * (M + 1) * V + b * M + i)
                keep = u * q_d < p_d
            if not keep:
                rejected = m * 0 + 1
                accepted = i
                if GREEDY:
                    token = best_t_idx
                else:
                    # pass 2: Gumbel-max over max(0, p - q), or over p if that is all zero
                    best = tl.full((), NEG_INF, tl.float32)
                    best_idx = m * 0
                    best_p = tl.full((), NEG_INF, tl.float32)
                    best_p_idx = m * 0
                    for v0 in range(0, V, BLOCK_V):
                        idx = v0 + offs
                        t, zq = _target_and_draft(ar_base + i * V, draft_base + i * V, idx, V, banned_id,
                                                  mix_weight, inv_temperature)
                        p = tl.exp(t - max_t) / sum_t  # exp(-inf) = 0 outside the vocabulary / on the ban
                        q = tl.exp(zq - max_q) / sum_q
                        g = _gumbel(gumbel_ptr, seed, noise_base + i * V + idx, idx, V, GIVEN_NOISE)
                        key = tl.where(p > q, tl.log(tl.maximum(p - q, TINY)) + g, NEG_INF)
                        key_p = tl.where(p > 0, tl.log(tl.maximum(p, TINY)) + g, NEG_INF)
                        chunk_best = tl.max(key, 0).to(tl.float32)
                        if chunk_best > best:
                            best = chunk_best
                            best_idx = v0 + tl.argmax(key, 0)
                        chunk_best_p = tl.max(key_p, 0)
                        if chunk_best_p > best_p:
                            best_p = chunk_best_p
                            best_p_idx = v0 + tl.argmax(key_p, 0)
                    token = tl.where(best > NEG_INF, best_idx, best_p_idx)
    if rejected == 0:
        # every draft accepted: the bonus token from the AR distribution of row m (no mixing there)
        best = tl.full((), NEG_INF, tl.float32)
        best_idx = m * 0
        for v0 in range(0, V, BLOCK_V):
            idx = v0 + offs
            valid = (idx < V) & (idx != banned_id)
            t = tl.load(ar_base + m * V + idx, mask=valid, other=0.0) * inv_temperature
            if GREEDY:
                key = tl.where(valid, t, NEG_INF)
            else:
                g = _gumbel(gumbel_ptr, seed, noise_base + m * V + idx, idx, V, GIVEN_NOISE)
                key = tl.where(valid, t + g, NEG_INF)
            chunk_best = tl.max(key, 0).to(tl.float32)
            if chunk_best > best:
                best = chunk_best
                best_idx = v0 + tl.argmax(key, 0)
        token = best_idx
    tl.store(accepted_ptr + b, accepted)
    tl.store(token_ptr + b, token)


def aot_signature(given_noise: bool, greedy: bool, block_v: int = 1024) -> tuple[dict, dict]:
    """(signature, constexprs) for ahead-of-time compilation of one kernel instance."""
    signature = {
        "ar_logits_ptr": "*fp32", "draft_logits_ptr": "*fp32", "drafts_ptr": "*i64", "num_drafts_ptr": "*i32",
        "uniforms_ptr": "*fp32", "gumbel_ptr": "*fp32", "accepted_ptr": "*i32", "token_ptr": "*i32",
        "seed": "i32", "V": "i32", "M": "i32", "mix_weight": "fp32", "inv_temperature": "fp32", "banned_id": "i32",
        "GIVEN_NOISE": "constexpr", "GREEDY": "constexpr", "BLOCK_V": "constexpr",
    }
    return signature, {"GIVEN_NOISE": given_noise, "GREEDY": greedy, "BLOCK_V": block_v}


def fused_verify(ar_logits: torch.Tensor, draft_logits: torch.Tensor, drafts: torch.Tensor, num_drafts: torch.Tensor,
                 params: SamplingParams, seed: int = 0, uniforms: torch.Tensor | None = None,
                 gumbel: torch.Tensor | None = None, block_v: int = 1024):
    """Launch the fused verifier. Returns (accepted (B,) int32, token (B,) int32), on the logits' device."""
    if params.top_k or params.top_p < 1.0:
        raise ZdiffError("the fused verifier does not apply top-k / top-p; use verifier='reference'")
    if len(params.banned) > 1:
        raise ZdiffError(f"the fused verifier bans at most one id (the mask token), got {list(params.banned)}")
    B, M1, V = ar_logits.shape
    M = M1 - 1
    if draft_logits.shape != (B, M, V) or drafts.shape != (B, M) or num_drafts.shape != (B,):
        raise ValueError(f"shape mismatch: ar {tuple(ar_logits.shape)}, draft {tuple(draft_logits.shape)}, "
                         f"drafts {tuple(drafts.shape)}, num_drafts {tuple(num_drafts.shape)}")
    device = ar_logits.device
    given = uniforms is not None
    if given:
        assert gumbel is not None and uniforms.shape == (B, M) and gumbel.shape == (B, M + 1, V)
    accepted = torch.full((B,), -7, dtype=torch.int32, device=device)  # poisoned: every program must write
    token = torch.full((B,), -7, dtype=torch.int32, device=device)
    dummy = torch.zeros(1, dtype=torch.float32, device=device)
    mix = params.mix_weight if params.kind == "logit_mix" else 1.0
    fused_verify_kernel[(B,)](
        ar_logits.float().contiguous(), draft_logits.float().contiguous() if M else dummy,
        drafts.contiguous() if M else dummy.long(), num_drafts.to(torch.int32).contiguous(),
        uniforms.float().contiguous() if given else dummy, gumbel.float().contiguous() if given else dummy,
        accepted, token,
        seed, V, M, float(mix), 1.0 / params.temperature, params.banned[0] if params.banned else -1,
        GIVEN_NOISE=given, GREEDY=params.kind == "greedy", BLOCK_V=min(block_v, triton.next_power_of_2(V)),
    )
    return accepted, token
