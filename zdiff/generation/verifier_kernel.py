"""The fused speculative verifier: three split-vocabulary Triton kernels, every slot with its own sampler.

For each slot b (a sequence) and verify row i in order: softmax statistics of the target t (AR
logits, or the logit mix w z_AR + (1 - w) z_draft) and of the draft distribution q over the
vocabulary, the acceptance test u q(d) < p(d), and at the first rejection a Gumbel-max draw from
max(0, p - q) (from p when that is all zero); if every draft is accepted, a bonus draw from the
last row. Greedy slots accept while d is the argmax and take the argmax. No host synchronisation:
accepted counts and tokens stay on the device.

Per slot (device tensors, so a captured graph replays any mix of requests): the sampler kind,
temperature and mix weight. The logits are read in the model dtype. Top-k / top-p: the filter kernel
(`filter_kernel`, one launch per side) writes the mixed, tempered, filtered logits in fp32 and these
kernels read them at unit scale (PROCESSED; `fused_verify_slots` does). Randomness is
keyed in the kernel, never positional in the batch (`keyed_rng`, the torch backend's bits): the
acceptance uniform of row i from (seed, first_position + i, ACCEPT) and the Gumbel noise of the
resample / bonus draw from (seed, first_position + n, RESAMPLE) and the token id; or both are
given explicitly (GIVEN_NOISE) so tests compare the kernels draw for draw with
`zdiff.generation.oracle.sampling.verify_stochastic`.

Glossary: B slots; M = padded drafts per slot (m_b <= M real ones); V vocabulary;
ar_logits (B, M+1, V) rows 0..m_b; draft_logits (B, M, V); drafts (B, M); outputs
accepted (B,) = n and token (B,) = the token placed at position L + n.

Three launches, no atomics:
  1. verify_stats_kernel, grid (S1, B*M): per (slot, draft row, vocabulary split) the
     online-softmax statistics (max, sum) of t and of q (greedy slots: max and argmax of t).
  2. verify_sample_kernel, grid (S2, B): every program combines the statistics of its slot over
     the splits, runs the accept/reject walk (vectorised over rows; cheap and identical in every
     program), then draws its split's share of the Gumbel-max over max(0, p - q) and over p
     (after a rejection) or over the bonus row; program 0 also records the walk's outcome.
  3. verify_finish_kernel, grid (B,): combines the split maxima (ties: the smallest index, as
     one program walking the vocabulary in order would) and writes accepted and token.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .filter_kernel import launch_filter
from .keyed_rng import ACCEPT_SALT, RESAMPLE_SALT, _accept_uniform, _gumbel_of, _row_key
from .logit_mix import _mix
from .vocab_kernels import (
    BIG_INDEX,
    GREEDY_CODE,
    LOGIT_MIX_CODE,
    MAX_SAMPLE_SPLITS,
    MAX_STATS_SPLITS,
    NEG_INF,
    TINY,
    _explicit_splits,
    _lane_best,
    _reduce_best,
    sm_count,
    vocab_splits,
)


@triton.jit
def _target_and_draft(ar_row, draft_row, idx, V, banned_id, mix_weight, inv_temperature):
    """One vocabulary chunk of a verify row: target logits t and draft logits z_q, -inf outside."""
    valid = (idx < V) & (idx != banned_id)
    za = tl.load(ar_row + idx, mask=valid, other=0.0).to(tl.float32)
    zd = tl.load(draft_row + idx, mask=valid, other=0.0).to(tl.float32)
    t = tl.where(valid, _mix(za, zd, mix_weight) * inv_temperature, NEG_INF)
    zq = tl.where(valid, zd * inv_temperature, NEG_INF)
    return t, zq


@triton.jit
def _gumbel(noise_ptr, noise_row, key, idx, V, GIVEN_NOISE: tl.constexpr):
    """Gumbel noise for one vocabulary chunk of verify row `noise_row` (b * (M + 1) + i): read from a
    (B, M+1, V) tensor (tests), or the keyed generator's noise (`keyed_rng`) under that row's RESAMPLE key."""
    if GIVEN_NOISE:
        g = tl.load(noise_ptr + noise_row.to(tl.int64) * V + idx, mask=idx < V, other=0.0)
    else:
        g = _gumbel_of(key, idx)
    return g


@triton.jit
def _slot_sampler(kind_ptr, temperature_ptr, mix_ptr, b, PROCESSED: tl.constexpr):
    """(greedy, random = not greedy, 1 / temperature, mix weight) of slot b. PROCESSED: the caller already
    mixed, tempered and filtered the logits (top-k / top-p): unit scale, no mixing."""
    kind = tl.load(kind_ptr + b)
    if PROCESSED:
        inv_temperature = 1.0
        mix_weight = 1.0
    else:
        inv_temperature = 1.0 / tl.load(temperature_ptr + b)
        mix_weight = tl.where(kind == LOGIT_MIX_CODE, tl.load(mix_ptr + b), 1.0)
    return kind == GREEDY_CODE, kind != GREEDY_CODE, inv_temperature, mix_weight


@triton.jit
def _online_update(mx, sm, x):
    """Lane-wise online softmax step with one exp: (max, sum of exp(. - max)) after seeing x."""
    hi = tl.maximum(mx, x)
    lo = tl.minimum(mx, x)
    e = tl.exp(lo - tl.where(hi == NEG_INF, 0.0, hi))  # both -inf: exp(-inf) = 0, not NaN
    sm = tl.where(x > mx, sm * e + 1.0, sm + e)
    return hi, sm


@triton.jit
def verify_stats_kernel(
    ar_logits_ptr, draft_logits_ptr, num_drafts_ptr, kind_ptr, temperature_ptr, mix_ptr, stats_ptr, argmax_ptr,
    V, M, S1, chunks_per_split, banned_id,
    PROCESSED: tl.constexpr, BLOCK_V: tl.constexpr,
):
    s = tl.program_id(0)
    row = tl.program_id(1)  # b * M + i
    b = row // M
    i = row - b * M
    m = tl.load(num_drafts_ptr + b).to(tl.int32)
    greedy, _, inv_temperature, mix_weight = _slot_sampler(kind_ptr, temperature_ptr, mix_ptr, b, PROCESSED)
    if i < m:
        row64 = row.to(tl.int64)
        ar_row = ar_logits_ptr + (row64 + b) * V  # row i of (B, M+1, V): b*(M+1) + i = row + b
        draft_row = draft_logits_ptr + row64 * V
        offs = tl.arange(0, BLOCK_V)
        out = stats_ptr + row64 * 4 * S1 + s  # (B*M, 4, S1): max_t, sum_t, max_q, sum_q
        if greedy:  # greedy never mixes: t = z_AR / T; only the argmax is needed
            max_t = tl.full((BLOCK_V,), NEG_INF, tl.float32)
            arg_t = tl.zeros((BLOCK_V,), tl.int32)
            for c in range(0, chunks_per_split):
                idx = (s * chunks_per_split + c) * BLOCK_V + offs
                valid = (idx < V) & (idx != banned_id)
                t = tl.load(ar_row + idx, mask=valid, other=0.0).to(tl.float32)
                t = tl.where(valid, t * inv_temperature, NEG_INF)
                max_t, arg_t = _lane_best(max_t, arg_t, t, idx)
            top, top_idx = _reduce_best(max_t, arg_t)
            tl.store(out, top)
            tl.store(argmax_ptr + row64 * S1 + s, top_idx)
        else:
            max_t = tl.full((BLOCK_V,), NEG_INF, tl.float32)
            sum_t = tl.zeros((BLOCK_V,), tl.float32)
            max_q = tl.full((BLOCK_V,), NEG_INF, tl.float32)
            sum_q = tl.zeros((BLOCK_V,), tl.float32)
            for c in range(0, chunks_per_split):
                idx = (s * chunks_per_split + c) * BLOCK_V + offs
                t, zq = _target_and_draft(ar_row, draft_row, idx, V, banned_id, mix_weight, inv_temperature)
                max_t, sum_t = _online_update(max_t, sum_t, t)
                max_q, sum_q = _online_update(max_q, sum_q, zq)
            top_t = tl.max(max_t, 0).to(tl.float32)
            top_q = tl.max(max_q, 0).to(tl.float32)
            tl.store(out, top_t)
            sum_t = tl.sum(sum_t * tl.exp(max_t - tl.where(top_t == NEG_INF, 0.0, top_t)), 0)
            tl.store(out + S1, sum_t.to(tl.float32))
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
def _walk_rows(ar_base, draft_base, drafts_ptr, stats_ptr, argmax_ptr, uniforms_ptr, b, i, m, M, V, S1, splits,
               banned_id, greedy, random, inv_temperature, mix_weight, seed, first_position,
               GIVEN_NOISE: tl.constexpr):
    """Draft rows i (a vector) of slot b in the walk: (rejected, argmax, max_t, sum_t, max_q, sum_q) per row, the
    statistics combined over the vocabulary splits."""
    live = i < m
    srow = (b * M + i).to(tl.int64)
    d = tl.load(drafts_ptr + b * M + i, mask=live, other=0).to(tl.int32)
    base = stats_ptr + (srow * 4 * S1)[:, None]
    # every statistic is read only where its kernel wrote it: greedy slots have max_t and
    # the argmax, the others the four softmax statistics
    pmax = _combine_rows(base, live, splits, S1, NEG_INF)
    # (tl.where, not `live & greedy`: the interpreter gives a vector & scalar bool an int32 mask)
    live_greedy = tl.where(greedy, live, False)
    live_random = tl.where(random, live, False)
    parg = _combine_rows(argmax_ptr + (srow * S1)[:, None], live_greedy, splits, S1, BIG_INDEX)
    top = tl.max(pmax, 1).to(tl.float32)
    row_best = tl.min(tl.where(pmax == top[:, None], parg, BIG_INDEX), 1)
    max_t, sum_t = _combine_softmax(pmax, _combine_rows(base + S1, live_random, splits, S1, 0.0))
    max_q, sum_q = _combine_softmax(_combine_rows(base + 2 * S1, live_random, splits, S1, NEG_INF),
                                    _combine_rows(base + 3 * S1, live_random, splits, S1, 0.0))
    at_d = live_random & (d != banned_id)  # a banned draft has p(d) = q(d) = 0: rejected, as the reference
    za_d = tl.load(ar_base + i * V + d, mask=at_d, other=0.0).to(tl.float32)
    zd_d = tl.load(draft_base + i * V + d, mask=at_d, other=0.0).to(tl.float32)
    p_d = tl.where(at_d, tl.exp(_mix(za_d, zd_d, mix_weight) * inv_temperature - max_t) / sum_t, 0.0)
    q_d = tl.where(at_d, tl.exp(zd_d * inv_temperature - max_q) / sum_q, 0.0)
    if GIVEN_NOISE:
        u = tl.load(uniforms_ptr + b * M + i, mask=live_random, other=0.0)
    else:
        u = _accept_uniform(seed, first_position + i, ACCEPT_SALT)
    reject = tl.where(greedy, live & (d != row_best), live & (u * q_d >= p_d))  # not (u q(d) < p(d))
    return reject, row_best, max_t, sum_t, max_q, sum_q


@triton.jit
def verify_sample_kernel(
    ar_logits_ptr, draft_logits_ptr, drafts_ptr, num_drafts_ptr, kind_ptr, temperature_ptr, mix_ptr,
    seed_ptr, position_ptr, uniforms_ptr, noise_ptr,
    stats_ptr, argmax_ptr, walk_ptr, best_ptr, best_idx_ptr,
    V, M, S1, S2, chunks_per_split, banned_id,
    GIVEN_NOISE: tl.constexpr, PROCESSED: tl.constexpr, BLOCK_V: tl.constexpr, ROWS: tl.constexpr,
    SPLITS1: tl.constexpr,
):
    s = tl.program_id(0)
    b = tl.program_id(1)
    m = tl.load(num_drafts_ptr + b).to(tl.int32)
    greedy, random, inv_temperature, mix_weight = _slot_sampler(kind_ptr, temperature_ptr, mix_ptr, b, PROCESSED)
    seed = tl.load(seed_ptr + b)
    first_position = tl.load(position_ptr + b)  # the position of draft d_1 (verify row i decides first + i)
    ar_base = ar_logits_ptr + b.to(tl.int64) * (M + 1) * V
    draft_base = draft_logits_ptr + b.to(tl.int64) * M * V
    noise_rows = b * (M + 1)  # this slot's verify rows in the (B, M+1) noise keys / (B, M+1, V) given noise
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
            reject, row_best, max_t, sum_t, max_q, sum_q = _walk_rows(
                ar_base, draft_base, drafts_ptr, stats_ptr, argmax_ptr, uniforms_ptr, b, i, m, M, V, S1, splits,
                banned_id, greedy, random, inv_temperature, mix_weight, seed, first_position, GIVEN_NOISE)
            first = tl.min(tl.where(reject, i, BIG_INDEX), 0)
            if first < BIG_INDEX:
                n = first
                chosen = i == first
                r_token = tl.sum(tl.where(chosen, row_best, 0), 0)  # greedy: the row's argmax
                r_max_t = tl.sum(tl.where(chosen, max_t, 0.0), 0)
                r_sum_t = tl.sum(tl.where(chosen, sum_t, 0.0), 0)
                r_max_q = tl.sum(tl.where(chosen, max_q, 0.0), 0)
                r_sum_q = tl.sum(tl.where(chosen, sum_q, 0.0), 0)
    if s == 0:
        tl.store(walk_ptr + 2 * b, n)
        tl.store(walk_ptr + 2 * b + 1, r_token)
    # pass 2 over this program's share of the vocabulary
    out = b * 2 * S2 + s  # (B, 2, S2): slot 0 residual (or bonus) key, slot 1 the key over p
    key = _row_key(seed, first_position + n, RESAMPLE_SALT)  # the draw decides position first + n
    if n < m:
        if random:  # (a greedy rejection's token is the walk's argmax)
            top, top_idx, top_p, top_p_idx = _residual_race(
                ar_base + n * V, draft_base + n * V, noise_ptr, noise_rows + n, key, s * chunks_per_split,
                chunks_per_split, V, banned_id, mix_weight, inv_temperature, r_max_t, r_sum_t, r_max_q, r_sum_q,
                GIVEN_NOISE, BLOCK_V)
            tl.store(best_ptr + out, top)
            tl.store(best_idx_ptr + out, top_idx)
            tl.store(best_ptr + out + S2, top_p)
            tl.store(best_idx_ptr + out + S2, top_p_idx)
    else:
        top, top_idx = _bonus_race(ar_base + m * V, noise_ptr, noise_rows + m, key, s * chunks_per_split,
                                   chunks_per_split, V, banned_id, inv_temperature, greedy, GIVEN_NOISE, BLOCK_V)
        tl.store(best_ptr + out, top)
        tl.store(best_idx_ptr + out, top_idx)


@triton.jit
def _residual_race(ar_row, draft_row, noise_ptr, noise_row, key, first_chunk, chunks_per_split, V, banned_id,
                   mix_weight, inv_temperature, max_t, sum_t, max_q, sum_q,
                   GIVEN_NOISE: tl.constexpr, BLOCK_V: tl.constexpr):
    """A rejected row, this program's chunks: the Gumbel-max over max(0, p - q), and over p in case that is all
    zero; (key, index) of each, reduced over the lanes."""
    offs = tl.arange(0, BLOCK_V)
    best = tl.full((BLOCK_V,), NEG_INF, tl.float32)
    best_idx = tl.zeros((BLOCK_V,), tl.int32)
    best_p = tl.full((BLOCK_V,), NEG_INF, tl.float32)
    best_p_idx = tl.zeros((BLOCK_V,), tl.int32)
    for c in range(0, chunks_per_split):
        idx = (first_chunk + c) * BLOCK_V + offs
        t, zq = _target_and_draft(ar_row, draft_row, idx, V, banned_id, mix_weight, inv_temperature)
        p = tl.exp(t - max_t) / sum_t  # exp(-inf) = 0 outside the vocabulary / on the ban
        q = tl.exp(zq - max_q) / sum_q
        g = _gumbel(noise_ptr, noise_row, key, idx, V, GIVEN_NOISE)
        race = tl.where(p > q, tl.log(tl.maximum(p - q, TINY)) + g, NEG_INF)
        key_p = tl.where(p > 0, tl.log(tl.maximum(p, TINY)) + g, NEG_INF)
        best, best_idx = _lane_best(best, best_idx, race, idx)
        best_p, best_p_idx = _lane_best(best_p, best_p_idx, key_p, idx)
    top, top_idx = _reduce_best(best, best_idx)
    top_p, top_p_idx = _reduce_best(best_p, best_p_idx)
    return top, top_idx, top_p, top_p_idx


@triton.jit
def _bonus_race(ar_row, noise_ptr, noise_row, key, first_chunk, chunks_per_split, V, banned_id, inv_temperature,
                greedy, GIVEN_NOISE: tl.constexpr, BLOCK_V: tl.constexpr):
    """Every draft accepted, this program's chunks: the bonus token's race over row m's AR distribution (no
    mixing there; the argmax for a greedy slot), (key, index) reduced over the lanes."""
    offs = tl.arange(0, BLOCK_V)
    best = tl.full((BLOCK_V,), NEG_INF, tl.float32)
    best_idx = tl.zeros((BLOCK_V,), tl.int32)
    for c in range(0, chunks_per_split):
        idx = (first_chunk + c) * BLOCK_V + offs
        valid = (idx < V) & (idx != banned_id)
        t = tl.load(ar_row + idx, mask=valid, other=0.0).to(tl.float32) * inv_temperature
        if greedy:
            race = tl.where(valid, t, NEG_INF)
        else:
            g = _gumbel(noise_ptr, noise_row, key, idx, V, GIVEN_NOISE)
            race = tl.where(valid, t + g, NEG_INF)
        best, best_idx = _lane_best(best, best_idx, race, idx)
    return _reduce_best(best, best_idx)


@triton.jit
def verify_finish_kernel(
    num_drafts_ptr, kind_ptr, walk_ptr, best_ptr, best_idx_ptr, accepted_ptr, token_ptr, S2,
    SPLITS2: tl.constexpr,
):
    b = tl.program_id(0)
    m = tl.load(num_drafts_ptr + b).to(tl.int32)
    n = tl.load(walk_ptr + 2 * b)
    greedy = tl.load(kind_ptr + b) == GREEDY_CODE
    splits = tl.arange(0, SPLITS2)
    in_range = splits < S2
    base = b * 2 * S2
    if greedy & (n < m):
        token = tl.load(walk_ptr + 2 * b + 1)  # a rejection: the row's argmax, found by the walk
    else:
        top, token = _reduce_best(tl.load(best_ptr + base + splits, mask=in_range, other=NEG_INF),
                                  tl.load(best_idx_ptr + base + splits, mask=in_range, other=BIG_INDEX))
        if (n < m) & (top == NEG_INF):  # max(0, p - q) all zero: p == q up to rounding, draw from p
            _, token = _reduce_best(tl.load(best_ptr + base + S2 + splits, mask=in_range, other=NEG_INF),
                                    tl.load(best_idx_ptr + base + S2 + splits, mask=in_range, other=BIG_INDEX))
    tl.store(accepted_ptr + b, n.to(tl.int64))
    tl.store(token_ptr + b, token.to(tl.int64))


def launch_verify(ar_logits: torch.Tensor, draft_logits: torch.Tensor, drafts: torch.Tensor, num_drafts: torch.Tensor,
                  kind: torch.Tensor, temperature: torch.Tensor, mix_weight: torch.Tensor, seed: torch.Tensor,
                  first_position: torch.Tensor, banned_id: int = -1, processed: bool = False,
                  given: tuple[torch.Tensor, torch.Tensor] | None = None, block_v: int = 1024,
                  stats_splits: int | None = None, sample_splits: int | None = None,
                  num_warps: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The three kernels on the step's own tensors (logits in the model dtype; no conversion, no copy).
    Returns (accepted (B,) int64, token (B,) int64).

    kind, num_drafts, seed, first_position (B,) int64; temperature, mix_weight (B,) fp32; processed: the
    logits are already mixed, tempered and filtered (read at unit scale). Randomness: keyed in the kernel on
    (seed, first_position + row, purpose), or given (uniforms (B, M) fp32, Gumbel noise (B, M+1, V) fp32) for
    draw-for-draw tests. stats_splits / sample_splits: vocabulary splits of pass 1 / pass 2; by default
    chosen on the host from V, the batch and the device's SM count (no synchronisation)."""
    B, M1, V = ar_logits.shape
    M = M1 - 1
    device = ar_logits.device
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
    # outputs and workspaces: torch.empty, no launch (tests poison them; every entry is written before it is read)
    accepted = torch.empty((B,), dtype=torch.int64, device=device)
    token = torch.empty((B,), dtype=torch.int64, device=device)
    stats = torch.empty((B * M, 4, S1), dtype=torch.float32, device=device)
    argmax = torch.empty((B * M, S1), dtype=torch.int32, device=device)
    walk = torch.empty((B, 2), dtype=torch.int32, device=device)
    best = torch.empty((B, 2, S2), dtype=torch.float32, device=device)
    best_idx = torch.empty((B, 2, S2), dtype=torch.int32, device=device)
    unused = torch.empty(1, dtype=torch.float32, device=device)  # never read (a dummy pointer)
    draft = draft_logits if M else unused
    u, noise = given if given is not None else (unused, unused)
    sampler = (kind, temperature, mix_weight)
    if B * M:
        verify_stats_kernel[(S1, B * M)](
            ar_logits, draft, num_drafts, *sampler, stats, argmax, V, M, S1, per1, banned_id,
            PROCESSED=processed, BLOCK_V=block_v, num_warps=num_warps)
    verify_sample_kernel[(S2, B)](
        ar_logits, draft, drafts if M else unused, num_drafts, *sampler, seed, first_position, u, noise,
        stats, argmax, walk, best, best_idx, V, M, S1, S2, per2, banned_id,
        GIVEN_NOISE=given is not None, PROCESSED=processed, BLOCK_V=block_v,
        ROWS=min(16, triton.next_power_of_2(max(M, 1))), SPLITS1=triton.next_power_of_2(S1), num_warps=num_warps)
    verify_finish_kernel[(B,)](num_drafts, kind, walk, best, best_idx, accepted, token, S2,
                               SPLITS2=triton.next_power_of_2(S2), num_warps=1)
    return accepted, token


def fused_verify_slots(ar_logits: torch.Tensor, draft_logits: torch.Tensor, drafts: torch.Tensor,
                       num_drafts: torch.Tensor, first_position: torch.Tensor, kind: torch.Tensor,
                       temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                       mix_weight: torch.Tensor, seed: torch.Tensor, banned_id: int, filtered: bool,
                       given: tuple[torch.Tensor, torch.Tensor] | None = None,
                       **launch) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused backend of `verify.verify_slots` (same arguments and results). Unfiltered: the kernels read
    the raw logits in the model dtype and apply each slot's temperature, mix weight and the ban; filtered
    (some slot uses top-k / top-p): `filter_kernel` mixes, tempers, bans and filters both sides first (one
    launch each, fp32 at unit scale)."""
    M = ar_logits.shape[1] - 1
    draft_logits, drafts = draft_logits[:, :M].contiguous(), drafts[:, :M]
    ar = ar_logits
    if filtered:  # two more launches: the mixed targets and the draft rows, filtered at unit scale
        ar = launch_filter(ar_logits, kind, temperature, top_k, top_p, banned_id, draft_logits, num_drafts,
                           mix_weight)
        draft_logits = launch_filter(draft_logits, kind, temperature, top_k, top_p, banned_id)
    return launch_verify(ar.contiguous(), draft_logits, drafts.contiguous(), num_drafts, kind,
                         temperature, mix_weight, seed, first_position, banned_id, filtered, given, **launch)


def aot_kernels(given_noise: bool, logits: str = "bf16", block_v: int = 1024, rows: int = 16,
                splits1: int = MAX_STATS_SPLITS, splits2: int = MAX_SAMPLE_SPLITS,
                processed: bool = False) -> list[tuple]:
    """(name, kernel, signature, constexprs, num_warps) of the verifier's three kernels, for AOT compilation.
    logits: the logits' element type (the model dtype; fp32 after top-k / top-p filtering). Eight warps at
    BLOCK_V = 1024 (8 logits per thread): with bf16 logits, four warps (16 per thread) left 8 bytes of stack
    in verify_stats on sm_90."""
    i32, i64 = "i32", "*i64"
    sampler = {"kind_ptr": i64, "temperature_ptr": "*fp32", "mix_ptr": "*fp32"}
    stats = {"ar_logits_ptr": f"*{logits}", "draft_logits_ptr": f"*{logits}", "num_drafts_ptr": i64, **sampler,
             "stats_ptr": "*fp32", "argmax_ptr": "*i32", "V": i32, "M": i32, "S1": i32,
             "chunks_per_split": i32, "banned_id": i32, "PROCESSED": "constexpr", "BLOCK_V": "constexpr"}
    sample = {"ar_logits_ptr": f"*{logits}", "draft_logits_ptr": f"*{logits}", "drafts_ptr": i64,
              "num_drafts_ptr": i64, **sampler, "seed_ptr": i64, "position_ptr": i64, "uniforms_ptr": "*fp32",
              "noise_ptr": "*fp32", "stats_ptr": "*fp32", "argmax_ptr": "*i32",
              "walk_ptr": "*i32", "best_ptr": "*fp32", "best_idx_ptr": "*i32", "V": i32, "M": i32, "S1": i32,
              "S2": i32, "chunks_per_split": i32, "banned_id": i32, "GIVEN_NOISE": "constexpr",
              "PROCESSED": "constexpr", "BLOCK_V": "constexpr", "ROWS": "constexpr", "SPLITS1": "constexpr"}
    finish = {"num_drafts_ptr": i64, "kind_ptr": i64, "walk_ptr": "*i32", "best_ptr": "*fp32",
              "best_idx_ptr": "*i32", "accepted_ptr": i64, "token_ptr": i64, "S2": i32, "SPLITS2": "constexpr"}
    return [
        ("verify_stats", verify_stats_kernel, stats, {"PROCESSED": processed, "BLOCK_V": block_v}, 8),
        ("verify_sample", verify_sample_kernel, sample,
         {"GIVEN_NOISE": given_noise, "PROCESSED": processed, "BLOCK_V": block_v, "ROWS": rows, "SPLITS1": splits1},
         8),
        ("verify_finish", verify_finish_kernel, finish, {"SPLITS2": splits2}, 1),
    ]
