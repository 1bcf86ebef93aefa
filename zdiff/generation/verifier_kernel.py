"""The fused speculative verifier: one Triton program per sequence, one pass over the logits.

For each verify row in order: softmax statistics of the target (AR logits, or the logit-mix
w*z_AR + (1-w)*z_draft) and of the draft distribution q over the vocabulary in chunks, the
acceptance test u*q(d) < p(d), and at the first rejection a Gumbel-max draw from
max(0, p - q) (falling back to p when that is all zero); if every draft is accepted, a
Gumbel-max bonus draw from the last row. No host synchronisation: accepted counts and
tokens stay on the device. Randomness is counter-based (tl.rand(seed, offset)), or given
explicitly (GIVEN_NOISE) so tests can compare it draw for draw with
`zdiff.generation.sampling.verify_stochastic`.

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
FINITE_FLOOR = tl.constexpr(-3.0e38)  # below every real logit, above -inf
# keeps tl.log away from 0 in discarded lanes; a normal fp32 (1e-38 made Triton 3.6 widen to fp64)
TINY = tl.constexpr(1e-30)


@triton.jit
def _mix(za, zd, mix_weight):
    """w * z_AR + (1 - w) * z_draft with masked (-inf) logits floored to a finite -3e38 first: a zero weight
    times -inf would be NaN (0 * -inf), while a floored logit still gives probability exactly 0, and
    finite logits mix exactly as before (w = 1 is the lossless target bit for bit). Two max ops rather
    than selects on the weight: the sampling kernel has no registers to spare on sm_90."""
    za = tl.maximum(za, FINITE_FLOOR)
    zd = tl.maximum(zd, FINITE_FLOOR)
    return mix_weight * za + (1.0 - mix_weight) * zd


@triton.jit
def _target_and_draft(ar_row, draft_row, idx, V, banned_id, mix_weight, inv_temperature):
    """One vocabulary chunk of a verify row: target logits t and draft logits z_q, -inf outside."""
    valid = (idx < V) & (idx != banned_id)
    za = tl.load(ar_row + idx, mask=valid, other=0.0)
    zd = tl.load(draft_row + idx, mask=valid, other=0.0)
    t = tl.where(valid, _mix(za, zd, mix_weight) * inv_temperature, NEG_INF)
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
            p_d = tl.exp(_mix(za_d, zd_d, mix_weight) * inv_temperature - max_t) / sum_t
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


def fused_verify_per_sequence(ar_logits: torch.Tensor, draft_logits: torch.Tensor, drafts: torch.Tensor,
                              num_drafts: torch.Tensor, params: SamplingParams, seed: int = 0,
                              uniforms: torch.Tensor | None = None, gumbel: torch.Tensor | None = None,
                              block_v: int = 1024):
    """The original one-program-per-sequence kernel (kept as the baseline for timings and for the
    draw-for-draw comparison with the split kernels). Same arguments and results as `fused_verify`."""
    B, M, V = _check(ar_logits, draft_logits, drafts, num_drafts, params)
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


# ---------------------------------------------------------------------------------------------
# Split-vocabulary verifier: three launches, no atomics, no host synchronisation.
#   1. verify_stats_kernel, grid (S1, B*M): per (sequence, draft row, vocabulary split) the
#      online-softmax statistics (max, sum) of the target t and of q (greedy: max and argmax of t).
#   2. verify_sample_kernel, grid (S2, B): every program combines the stats of its sequence over
#      the splits, runs the accept/reject walk (vectorised over rows; cheap and identical in every
#      program), then draws its split's share of the Gumbel-max over max(0, p - q) and over p
#      (after a rejection) or over the bonus row; program 0 also records the walk's outcome.
#   3. verify_finish_kernel, grid (B,): combines the split maxima (ties: the smallest index, as
#      one program walking the vocabulary in order would) and writes accepted and token.
# The noise is the one of the per-sequence kernel (same Philox offsets, same given tensors), so
# both produce the same draws.
# ---------------------------------------------------------------------------------------------

BIG_INDEX = tl.constexpr(2147483647)


@triton.jit
def _online_update(mx, sm, x):
    """Lane-wise online softmax step with one exp: (max, sum of exp(. - max)) after seeing x."""
    hi = tl.maximum(mx, x)
    lo = tl.minimum(mx, x)
    e = tl.exp(lo - tl.where(hi == NEG_INF, 0.0, hi))  # both -inf: exp(-inf) = 0, not NaN
    sm = tl.where(x > mx, sm * e + 1.0, sm + e)
    return hi, sm


@triton.jit
def _lane_best(best, best_idx, key, idx):
    """Lane-wise running maximum; strict > keeps the first index, as lanes see increasing indices."""
    better = key > best
    return tl.where(better, key, best), tl.where(better, idx, best_idx)


@triton.jit
def _reduce_best(best, best_idx):
    """(max, smallest index reaching it) of lane-wise maxima."""
    top = tl.max(best, 0).to(tl.float32)
    return top, tl.min(tl.where(best == top, best_idx, BIG_INDEX), 0)


@triton.jit
def verify_stats_kernel(
    ar_logits_ptr, draft_logits_ptr, num_drafts_ptr, stats_ptr, argmax_ptr,
    V, M, S1, chunks_per_split, mix_weight, inv_temperature, banned_id,
    GREEDY: tl.constexpr, BLOCK_V: tl.constexpr,
):
    s = tl.program_id(0)
    row = tl.program_id(1)  # b * M + i
    b = row // M
    i = row - b * M
    m = tl.load(num_drafts_ptr + b)
    if i < m:
        row64 = row.to(tl.int64)
        ar_row = ar_logits_ptr + (row64 + b) * V  # row i of (B, M+1, V): b*(M+1) + i = row + b
        draft_row = draft_logits_ptr + row64 * V
        offs = tl.arange(0, BLOCK_V)
        max_t = tl.full((BLOCK_V,), NEG_INF, tl.float32)
        sum_t = tl.zeros((BLOCK_V,), tl.float32)
        max_q = tl.full((BLOCK_V,), NEG_INF, tl.float32)
        sum_q = tl.zeros((BLOCK_V,), tl.float32)
        arg_t = tl.zeros((BLOCK_V,), tl.int32)
        for c in range(0, chunks_per_split):
            idx = (s * chunks_per_split + c) * BLOCK_V + offs
            if GREEDY:  # greedy never mixes: t = z_AR / T
                valid = (idx < V) & (idx != banned_id)
                t = tl.where(valid, tl.load(ar_row + idx, mask=valid, other=0.0) * inv_temperature, NEG_INF)
                max_t, arg_t = _lane_best(max_t, arg_t, t, idx)
            else:
                t, zq = _target_and_draft(ar_row, draft_row, idx, V, banned_id, mix_weight, inv_temperature)
                max_t, sum_t = _online_update(max_t, sum_t, t)
                max_q, sum_q = _online_update(max_q, sum_q, zq)
        out = stats_ptr + row64 * 4 * S1 + s  # (B*M, 4, S1): max_t, sum_t, max_q, sum_q
        if GREEDY:
            top, top_idx = _reduce_best(max_t, arg_t)
            tl.store(out, top)
            tl.store(argmax_ptr + row64 * S1 + s, top_idx)
        else:
            top_t = tl.max(max_t, 0).to(tl.float32)
            top_q = tl.max(max_q, 0).to(tl.float32)
            tl.store(out, top_t)
            tl.store(out + S1, tl.sum(sum_t * tl.exp(max_t - tl.where(top_t == NEG_INF, 0.0, top_t)), 0).to(tl.float32))
            tl.store(out + 2 * S1, top_q)
            sum_q = tl.sum(sum_q * tl.exp(max_q - tl.where(top_q == NEG_INF, 0.0, top_q)), 0)
            tl.store(out + 3 * S1, sum_q.to(tl.float32))


@triton.jit
def _combine_rows(ptr, live, splits, S1, other):
    """(ROWS, SPLITS1) partials of live rows; `other` elsewhere (never reads an unwritten entry)."""
    mask = live[:, None] & (splits[None, :] < S1)
    return tl.load(ptr + splits[None, :], mask=mask, other=other)


@triton.jit
def _combine_softmax(pmax, psum):
    """Per-row (max, sum) from per-split (max, sum); -inf / 0 padding contributes nothing."""
    top = tl.max(pmax, 1).to(tl.float32)
    safe = tl.where(top == NEG_INF, 0.0, top)
    return top, tl.sum(psum * tl.exp(pmax - safe[:, None]), 1).to(tl.float32)


@triton.jit
def verify_sample_kernel(
    ar_logits_ptr, draft_logits_ptr, drafts_ptr, num_drafts_ptr, uniforms_ptr, gumbel_ptr,
    stats_ptr, argmax_ptr, walk_ptr, keys_ptr, key_idx_ptr,
    seed, V, M, S1, S2, chunks_per_split, mix_weight, inv_temperature, banned_id,
    GIVEN_NOISE: tl.constexpr, GREEDY: tl.constexpr, BLOCK_V: tl.constexpr, ROWS: tl.constexpr,
    SPLITS1: tl.constexpr,
):
    s = tl.program_id(0)
    b = tl.program_id(1)
    m = tl.load(num_drafts_ptr + b)
    ar_base = ar_logits_ptr + b.to(tl.int64) * (M + 1) * V
    draft_base = draft_logits_ptr + b.to(tl.int64) * M * V
    noise_base = b * (M + 1) * V  # the per-sequence kernel's Gumbel offsets; uniforms come after all of them
    rows = tl.arange(0, ROWS)
    splits = tl.arange(0, SPLITS1)
    # the walk: the first rejected row n (m if none) and its combined statistics
    n = m
    r_max_t = tl.full((), 0.0, tl.float32)
    r_sum_t = tl.full((), 1.0, tl.float32)
    r_max_q = tl.full((), 0.0, tl.float32)
    r_sum_q = tl.full((), 1.0, tl.float32)
    r_token = m * 0 - 1
    for i0 in range(0, M, ROWS):
        if n == m:
            i = i0 + rows
            live = i < m
            srow = (b * M + i).to(tl.int64)
            d = tl.load(drafts_ptr + b * M + i, mask=live, other=0).to(tl.int32)
            if GREEDY:
                pmax = _combine_rows(stats_ptr + (srow * 4 * S1)[:, None], live, splits, S1, NEG_INF)
                parg = _combine_rows(argmax_ptr + (srow * S1)[:, None], live, splits, S1, BIG_INDEX)
                top = tl.max(pmax, 1).to(tl.float32)
                row_best = tl.min(tl.where(pmax == top[:, None], parg, BIG_INDEX), 1)
                reject = live & (d != row_best)
            else:
                base = stats_ptr + (srow * 4 * S1)[:, None]
                max_t, sum_t = _combine_softmax(_combine_rows(base, live, splits, S1, NEG_INF),
                                                _combine_rows(base + S1, live, splits, S1, 0.0))
                max_q, sum_q = _combine_softmax(_combine_rows(base + 2 * S1, live, splits, S1, NEG_INF),
                                                _combine_rows(base + 3 * S1, live, splits, S1, 0.0))
                at_d = live & (d != banned_id)  # a banned draft has p(d) = q(d) = 0: rejected, as the reference
                za_d = tl.load(ar_base + i * V + d, mask=at_d, other=0.0)
                zd_d = tl.load(draft_base + i * V + d, mask=at_d, other=0.0)
                p_d = tl.where(at_d, tl.exp(_mix(za_d, zd_d, mix_weight) * inv_temperature - max_t) / sum_t, 0.0)
                q_d = tl.where(at_d, tl.exp(zd_d * inv_temperature - max_q) / sum_q, 0.0)
                if GIVEN_NOISE:
                    u = tl.load(uniforms_ptr + b * M + i, mask=live, other=0.0)
                else:
                    u = tl.rand(seed, tl.num_programs(1) * (M + 1) * V + b * M + i)
                reject = live & (u * q_d >= p_d)  # not (u q(d) < p(d))
            first = tl.min(tl.where(reject, i, BIG_INDEX), 0)
            if first < BIG_INDEX:
                n = first
                chosen = i == first
                if GREEDY:
                    r_token = tl.sum(tl.where(chosen, row_best, 0), 0)
                else:
                    r_max_t = tl.sum(tl.where(chosen, max_t, 0.0), 0)
                    r_sum_t = tl.sum(tl.where(chosen, sum_t, 0.0), 0)
                    r_max_q = tl.sum(tl.where(chosen, max_q, 0.0), 0)
                    r_sum_q = tl.sum(tl.where(chosen, sum_q, 0.0), 0)
    if s == 0:
        tl.store(walk_ptr + 2 * b, n)
        tl.store(walk_ptr + 2 * b + 1, r_token)
    # pass 2 over this program's share of the vocabulary
    offs = tl.arange(0, BLOCK_V)
    best = tl.full((BLOCK_V,), NEG_INF, tl.float32)
    best_idx = tl.zeros((BLOCK_V,), tl.int32)
    best_p = tl.full((BLOCK_V,), NEG_INF, tl.float32)
    best_p_idx = tl.zeros((BLOCK_V,), tl.int32)
    out = b * 2 * S2 + s  # (B, 2, S2): slot 0 residual (or bonus) key, slot 1 the key over p
    if n < m:
        if not GREEDY:
            # Gumbel-max over max(0, p - q), and over p in case that is all zero
            for c in range(0, chunks_per_split):
                idx = (s * chunks_per_split + c) * BLOCK_V + offs
                t, zq = _target_and_draft(ar_base + n * V, draft_base + n * V, idx, V, banned_id, mix_weight,
                                          inv_temperature)
                p = tl.exp(t - r_max_t) / r_sum_t  # exp(-inf) = 0 outside the vocabulary / on the ban
                q = tl.exp(zq - r_max_q) / r_sum_q
                g = _gumbel(gumbel_ptr, seed, noise_base + n * V + idx, idx, V, GIVEN_NOISE)
                key = tl.where(p > q, tl.log(tl.maximum(p - q, TINY)) + g, NEG_INF)
                key_p = tl.where(p > 0, tl.log(tl.maximum(p, TINY)) + g, NEG_INF)
                best, best_idx = _lane_best(best, best_idx, key, idx)
                best_p, best_p_idx = _lane_best(best_p, best_p_idx, key_p, idx)
            top, top_idx = _reduce_best(best, best_idx)
            top_p, top_p_idx = _reduce_best(best_p, best_p_idx)
            tl.store(keys_ptr + out, top)
            tl.store(key_idx_ptr + out, top_idx)
            tl.store(keys_ptr + out + S2, top_p)
            tl.store(key_idx_ptr + out + S2, top_p_idx)
    else:
        # every draft accepted: the bonus token from the AR distribution of row m (no mixing there)
        for c in range(0, chunks_per_split):
            idx = (s * chunks_per_split + c) * BLOCK_V + offs
            valid = (idx < V) & (idx != banned_id)
            t = tl.load(ar_base + m * V + idx, mask=valid, other=0.0) * inv_temperature
            if GREEDY:
                key = tl.where(valid, t, NEG_INF)
            else:
                g = _gumbel(gumbel_ptr, seed, noise_base + m * V + idx, idx, V, GIVEN_NOISE)
                key = tl.where(valid, t + g, NEG_INF)
            best, best_idx = _lane_best(best, best_idx, key, idx)
        top, top_idx = _reduce_best(best, best_idx)
        tl.store(keys_ptr + out, top)
        tl.store(key_idx_ptr + out, top_idx)


@triton.jit
def verify_finish_kernel(
    num_drafts_ptr, walk_ptr, keys_ptr, key_idx_ptr, accepted_ptr, token_ptr, S2,
    GREEDY: tl.constexpr, SPLITS2: tl.constexpr,
):
    b = tl.program_id(0)
    m = tl.load(num_drafts_ptr + b)
    n = tl.load(walk_ptr + 2 * b)
    splits = tl.arange(0, SPLITS2)
    in_range = splits < S2
    base = b * 2 * S2
    if GREEDY:
        token = tl.load(walk_ptr + 2 * b + 1)  # a rejection: the row's argmax, found by the walk
        if n == m:
            _, token = _reduce_best(tl.load(keys_ptr + base + splits, mask=in_range, other=NEG_INF),
                                    tl.load(key_idx_ptr + base + splits, mask=in_range, other=BIG_INDEX))
    else:
        top, token = _reduce_best(tl.load(keys_ptr + base + splits, mask=in_range, other=NEG_INF),
                                  tl.load(key_idx_ptr + base + splits, mask=in_range, other=BIG_INDEX))
        if (n < m) & (top == NEG_INF):  # max(0, p - q) all zero: p == q up to rounding, draw from p
            _, token = _reduce_best(tl.load(keys_ptr + base + S2 + splits, mask=in_range, other=NEG_INF),
                                    tl.load(key_idx_ptr + base + S2 + splits, mask=in_range, other=BIG_INDEX))
    tl.store(accepted_ptr + b, n)
    tl.store(token_ptr + b, token)


_SM_COUNTS: dict = {}


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors / compute units of `device` (cached; a property query, no synchronisation).
    CPU (the interpreter): 4."""
    device = torch.device(device)
    if device.type != "cuda":
        return 4
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]


MAX_STATS_SPLITS = 64  # the walk holds (16 rows, SPLITS1) partials per statistic in registers
MAX_SAMPLE_SPLITS = 256


def vocab_splits(V: int, rows: int, sms: int, block_v: int, max_splits: int, min_chunks: int,
                 programs_per_sm: int = 8) -> tuple[int, int]:
    """(splits, chunks per split) so that rows x splits programs give each SM about `programs_per_sm`,
    with at least `min_chunks` chunks of block_v per split; no split is left empty."""
    chunks = triton.cdiv(V, block_v)
    want = triton.cdiv(programs_per_sm * sms, max(rows, 1))
    splits = max(1, min(want, triton.cdiv(chunks, min_chunks), max_splits))
    per_split = triton.cdiv(chunks, splits)
    return triton.cdiv(chunks, per_split), per_split


def _explicit_splits(V: int, block_v: int, splits: int, limit: int) -> tuple[int, int]:
    """A caller's split count, kept as given (splits past the last chunk stay empty; tests use that)."""
    if not 1 <= splits <= limit:
        raise ValueError(f"splits must be in 1..{limit}, got {splits}")
    return splits, triton.cdiv(triton.cdiv(V, block_v), splits)


def _check(ar_logits, draft_logits, drafts, num_drafts, params):
    if params.top_k or params.top_p < 1.0:
        raise ZdiffError("the fused verifier does not apply top-k / top-p; use verifier='reference'")
    if len(params.banned) > 1:
        raise ZdiffError(f"the fused verifier bans at most one id (the mask token), got {list(params.banned)}")
    B, M1, V = ar_logits.shape
    M = M1 - 1
    if draft_logits.shape != (B, M, V) or drafts.shape != (B, M) or num_drafts.shape != (B,):
        raise ValueError(f"shape mismatch: ar {tuple(ar_logits.shape)}, draft {tuple(draft_logits.shape)}, "
                         f"drafts {tuple(drafts.shape)}, num_drafts {tuple(num_drafts.shape)}")
    check_draft_ids(drafts, num_drafts, V)
    return B, M, V


def check_draft_ids(drafts: torch.Tensor, num_drafts: torch.Tensor, vocab: int) -> None:
    """Real drafts (the first num_drafts[b] of each row) must be ids in [0, V): the kernels read
    p(d) and q(d) at d, so an id outside would read a neighbouring row or past the end.

    On the CPU the check is free and raises ZdiffError; on a GPU it is a device-side assert
    (torch._assert_async), which fails the stream without a host synchronisation."""
    if drafts.numel() == 0:
        return
    real = torch.arange(drafts.shape[1], device=drafts.device)[None, :] < num_drafts.to(drafts.device)[:, None]
    ok = ((drafts >= 0) & (drafts < vocab)) | ~real
    if drafts.device.type == "cpu":
        if not bool(ok.all()):
            bad = drafts[~ok][0].item()
            raise ZdiffError(f"drafts: ids must be in [0, {vocab}), got {bad}")
    else:
        torch._assert_async(ok.all(), f"drafts: ids must be in [0, {vocab})")


def fused_verify(ar_logits: torch.Tensor, draft_logits: torch.Tensor, drafts: torch.Tensor, num_drafts: torch.Tensor,
                 params: SamplingParams, seed: int = 0, uniforms: torch.Tensor | None = None,
                 gumbel: torch.Tensor | None = None, block_v: int = 1024, stats_splits: int | None = None,
                 sample_splits: int | None = None, num_warps: int = 4):
    """Launch the split-vocabulary verifier. Returns (accepted (B,) int32, token (B,) int32), on the logits' device.

    stats_splits / sample_splits: vocabulary splits of pass 1 / pass 2; by default chosen on the
    host from V, the batch and the device's SM count (no synchronisation)."""
    B, M, V = _check(ar_logits, draft_logits, drafts, num_drafts, params)
    device = ar_logits.device
    given = uniforms is not None
    if given:
        assert gumbel is not None and uniforms.shape == (B, M) and gumbel.shape == (B, M + 1, V)
    block_v = min(block_v, triton.next_power_of_2(V))
    sms = sm_count(device)
    if stats_splits is None:
        S1, per1 = vocab_splits(V, B * M, sms, block_v, MAX_STATS_SPLITS, min_chunks=4)
    else:
        S1, per1 = _explicit_splits(V, block_v, stats_splits, MAX_STATS_SPLITS)
    if sample_splits is None:
        S2, per2 = vocab_splits(V, B, sms, block_v, MAX_SAMPLE_SPLITS, min_chunks=2)
    else:
        S2, per2 = _explicit_splits(V, block_v, sample_splits, MAX_SAMPLE_SPLITS)
    greedy = params.kind == "greedy"
    accepted = torch.full((B,), -7, dtype=torch.int32, device=device)  # poisoned: every sequence must be written
    token = torch.full((B,), -7, dtype=torch.int32, device=device)
    # workspaces: torch.empty (tests poison them with NaN / -7; no entry is read before it is written)
    stats = torch.empty((B * M, 4, S1), dtype=torch.float32, device=device)
    argmax = torch.empty((B * M, S1) if greedy else (1,), dtype=torch.int32, device=device)
    walk = torch.empty((B, 2), dtype=torch.int32, device=device)
    keys = torch.empty((B, 2, S2), dtype=torch.float32, device=device)
    key_idx = torch.empty((B, 2, S2), dtype=torch.int32, device=device)
    dummy = torch.zeros(1, dtype=torch.float32, device=device)
    mix = float(params.mix_weight if params.kind == "logit_mix" else 1.0)
    inv_temperature = 1.0 / params.temperature
    banned = params.banned[0] if params.banned else -1
    ar = ar_logits.float().contiguous()
    draft = draft_logits.float().contiguous() if M else dummy
    num = num_drafts.to(torch.int32).contiguous()
    if B * M:
        verify_stats_kernel[(S1, B * M)](
            ar, draft, num, stats, argmax, V, M, S1, per1, mix, inv_temperature, banned,
            GREEDY=greedy, BLOCK_V=block_v, num_warps=num_warps)
    verify_sample_kernel[(S2, B)](
        ar, draft, drafts.contiguous() if M else dummy.long(), num,
        uniforms.float().contiguous() if given else dummy, gumbel.float().contiguous() if given else dummy,
        stats, argmax, walk, keys, key_idx,
        seed, V, M, S1, S2, per2, mix, inv_temperature, banned,
        GIVEN_NOISE=given, GREEDY=greedy, BLOCK_V=block_v, ROWS=min(16, triton.next_power_of_2(max(M, 1))),
        SPLITS1=triton.next_power_of_2(S1), num_warps=num_warps)
    verify_finish_kernel[(B,)](num, walk, keys, key_idx, accepted, token, S2,
                               GREEDY=greedy, SPLITS2=triton.next_power_of_2(S2), num_warps=1)
    return accepted, token


def aot_kernels(given_noise: bool, greedy: bool, block_v: int = 1024, rows: int = 16,
                splits1: int = MAX_STATS_SPLITS, splits2: int = MAX_SAMPLE_SPLITS) -> list[tuple]:
    """(name, kernel, signature, constexprs, num_warps) of the split verifier's three kernels, for AOT compilation."""
    f32, i32 = "fp32", "i32"
    stats = {"ar_logits_ptr": "*fp32", "draft_logits_ptr": "*fp32", "num_drafts_ptr": "*i32", "stats_ptr": "*fp32",
             "argmax_ptr": "*i32", "V": i32, "M": i32, "S1": i32, "chunks_per_split": i32, "mix_weight": f32,
             "inv_temperature": f32, "banned_id": i32, "GREEDY": "constexpr", "BLOCK_V": "constexpr"}
    sample = {"ar_logits_ptr": "*fp32", "draft_logits_ptr": "*fp32", "drafts_ptr": "*i64", "num_drafts_ptr": "*i32",
              "uniforms_ptr": "*fp32", "gumbel_ptr": "*fp32", "stats_ptr": "*fp32", "argmax_ptr": "*i32",
              "walk_ptr": "*i32", "keys_ptr": "*fp32", "key_idx_ptr": "*i32", "seed": i32, "V": i32, "M": i32,
              "S1": i32, "S2": i32, "chunks_per_split": i32, "mix_weight": f32, "inv_temperature": f32,
              "banned_id": i32, "GIVEN_NOISE": "constexpr", "GREEDY": "constexpr", "BLOCK_V": "constexpr",
              "ROWS": "constexpr", "SPLITS1": "constexpr"}
    finish = {"num_drafts_ptr": "*i32", "walk_ptr": "*i32", "keys_ptr": "*fp32", "key_idx_ptr": "*i32",
              "accepted_ptr": "*i32", "token_ptr": "*i32", "S2": i32, "GREEDY": "constexpr", "SPLITS2": "constexpr"}
    return [
        ("verify_stats", verify_stats_kernel, stats, {"GREEDY": greedy, "BLOCK_V": block_v}, 4),
        ("verify_sample", verify_sample_kernel, sample,
         {"GIVEN_NOISE": given_noise, "GREEDY": greedy, "BLOCK_V": block_v, "ROWS": rows, "SPLITS1": splits1}, 4),
        ("verify_finish", verify_finish_kernel, finish, {"GREEDY": greedy, "SPLITS2": splits2}, 1),
    ]
