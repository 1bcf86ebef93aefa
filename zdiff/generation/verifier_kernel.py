"""The fused speculative verifier: three split-vocabulary Triton kernels, every slot with its own sampler.

For each slot b (a sequence) and verify row i in order: softmax statistics of the target t (AR
logits, or the logit mix w z_AR + (1 - w) z_draft) and of the draft distribution q over the
vocabulary, the acceptance test u q(d) < p(d), and at the first rejection a Gumbel-max draw from
max(0, p - q) (from p when that is all zero); if every draft is accepted, a bonus draw from the
last row. Greedy slots accept while d is the argmax and take the argmax. No host synchronisation:
accepted counts and tokens stay on the device.

Per slot (device tensors, so a captured graph replays any mix of requests): the sampler kind,
1 / temperature and the mix weight. Top-k / top-p need a sort over the vocabulary: the caller
applies them on the device (`batched_sampling.process_logits`) and passes the filtered logits
with unit temperature (`fused_verify_slots` does). Randomness is keyed, never positional in
the batch: the acceptance uniforms come in as a (B, M) tensor and the Gumbel noise of row i is
`tl.rand(key[b, i], token_id)` with one key per (seed, token position) (`counter_rng`), or is
given explicitly (GIVEN_NOISE) so tests compare the kernels draw for draw with
`zdiff.generation.sampling.verify_stochastic`.

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

from ..errors import ZdiffError
from .batched_sampling import GREEDY, KIND_CODES, LOGIT_MIX, mixed_targets, process_logits
from .counter_rng import ACCEPT, RESAMPLE, stream_keys, uniforms
from .sampling import SamplingParams

NEG_INF = tl.constexpr(float("-inf"))
FINITE_FLOOR = tl.constexpr(-3.0e38)  # below every real logit, above -inf
# keeps tl.log away from 0 in discarded lanes; a normal fp32 (1e-38 made Triton 3.6 widen to fp64)
TINY = tl.constexpr(1e-30)
BIG_INDEX = tl.constexpr(2147483647)
GREEDY_CODE = tl.constexpr(GREEDY)
# the largest fp32 below 1: a float64 uniform rounded to fp32 must stay in [0, 1)
BELOW_ONE = 1.0 - 2.0**-24


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
def _gumbel(noise_ptr, noise_row, idx, V, GIVEN_NOISE: tl.constexpr):
    """Gumbel noise for one vocabulary chunk of verify row `noise_row` (b * (M + 1) + i): read from a
    (B, M+1, V) tensor (tests), or Philox keyed on that row's stream key and the token id."""
    if GIVEN_NOISE:
        g = tl.load(noise_ptr + noise_row.to(tl.int64) * V + idx, mask=idx < V, other=0.0)
    else:
        key = tl.load(noise_ptr + noise_row)
        u = tl.rand(key, idx)
        g = -tl.log(-tl.log(tl.minimum(tl.maximum(u, 1e-7), 1.0 - 1e-7)))
    return g


@triton.jit
def _slot_sampler(kind_ptr, scale_ptr, b):
    """(greedy, random = not greedy, 1 / temperature, mix weight) of slot b; scale is (B, 2) fp32."""
    kind = tl.load(kind_ptr + b)
    return kind == GREEDY_CODE, kind != GREEDY_CODE, tl.load(scale_ptr + 2 * b), tl.load(scale_ptr + 2 * b + 1)


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
    ar_logits_ptr, draft_logits_ptr, num_drafts_ptr, kind_ptr, scale_ptr, stats_ptr, argmax_ptr,
    V, M, S1, chunks_per_split, banned_id,
    BLOCK_V: tl.constexpr,
):
    s = tl.program_id(0)
    row = tl.program_id(1)  # b * M + i
    b = row // M
    i = row - b * M
    m = tl.load(num_drafts_ptr + b)
    greedy, _, inv_temperature, mix_weight = _slot_sampler(kind_ptr, scale_ptr, b)
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
                t = tl.where(valid, tl.load(ar_row + idx, mask=valid, other=0.0) * inv_temperature, NEG_INF)
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
def verify_sample_kernel(
    ar_logits_ptr, draft_logits_ptr, drafts_ptr, num_drafts_ptr, kind_ptr, scale_ptr, uniforms_ptr, noise_ptr,
    stats_ptr, argmax_ptr, walk_ptr, best_ptr, best_idx_ptr,
    V, M, S1, S2, chunks_per_split, banned_id,
    GIVEN_NOISE: tl.constexpr, BLOCK_V: tl.constexpr, ROWS: tl.constexpr, SPLITS1: tl.constexpr,
):
    s = tl.program_id(0)
    b = tl.program_id(1)
    m = tl.load(num_drafts_ptr + b)
    greedy, random, inv_temperature, mix_weight = _slot_sampler(kind_ptr, scale_ptr, b)
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
            za_d = tl.load(ar_base + i * V + d, mask=at_d, other=0.0)
            zd_d = tl.load(draft_base + i * V + d, mask=at_d, other=0.0)
            p_d = tl.where(at_d, tl.exp(_mix(za_d, zd_d, mix_weight) * inv_temperature - max_t) / sum_t, 0.0)
            q_d = tl.where(at_d, tl.exp(zd_d * inv_temperature - max_q) / sum_q, 0.0)
            u = tl.load(uniforms_ptr + b * M + i, mask=live_random, other=0.0)
            reject = tl.where(greedy, live & (d != row_best), live & (u * q_d >= p_d))  # not (u q(d) < p(d))
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
    offs = tl.arange(0, BLOCK_V)
    best = tl.full((BLOCK_V,), NEG_INF, tl.float32)
    best_idx = tl.zeros((BLOCK_V,), tl.int32)
    best_p = tl.full((BLOCK_V,), NEG_INF, tl.float32)
    best_p_idx = tl.zeros((BLOCK_V,), tl.int32)
    out = b * 2 * S2 + s  # (B, 2, S2): slot 0 residual (or bonus) key, slot 1 the key over p
    if n < m:
        if random:  # (a greedy rejection's token is the walk's argmax)
            # Gumbel-max over max(0, p - q), and over p in case that is all zero
            for c in range(0, chunks_per_split):
                idx = (s * chunks_per_split + c) * BLOCK_V + offs
                t, zq = _target_and_draft(ar_base + n * V, draft_base + n * V, idx, V, banned_id, mix_weight,
                                          inv_temperature)
                p = tl.exp(t - r_max_t) / r_sum_t  # exp(-inf) = 0 outside the vocabulary / on the ban
                q = tl.exp(zq - r_max_q) / r_sum_q
                g = _gumbel(noise_ptr, noise_rows + n, idx, V, GIVEN_NOISE)
                key = tl.where(p > q, tl.log(tl.maximum(p - q, TINY)) + g, NEG_INF)
                key_p = tl.where(p > 0, tl.log(tl.maximum(p, TINY)) + g, NEG_INF)
                best, best_idx = _lane_best(best, best_idx, key, idx)
                best_p, best_p_idx = _lane_best(best_p, best_p_idx, key_p, idx)
            top, top_idx = _reduce_best(best, best_idx)
            top_p, top_p_idx = _reduce_best(best_p, best_p_idx)
            tl.store(best_ptr + out, top)
            tl.store(best_idx_ptr + out, top_idx)
            tl.store(best_ptr + out + S2, top_p)
            tl.store(best_idx_ptr + out + S2, top_p_idx)
    else:
        # every draft accepted: the bonus token from the AR distribution of row m (no mixing there)
        for c in range(0, chunks_per_split):
            idx = (s * chunks_per_split + c) * BLOCK_V + offs
            valid = (idx < V) & (idx != banned_id)
            t = tl.load(ar_base + m * V + idx, mask=valid, other=0.0) * inv_temperature
            if greedy:
                key = tl.where(valid, t, NEG_INF)
            else:
                g = _gumbel(noise_ptr, noise_rows + m, idx, V, GIVEN_NOISE)
                key = tl.where(valid, t + g, NEG_INF)
            best, best_idx = _lane_best(best, best_idx, key, idx)
        top, top_idx = _reduce_best(best, best_idx)
        tl.store(best_ptr + out, top)
        tl.store(best_idx_ptr + out, top_idx)


@triton.jit
def verify_finish_kernel(
    num_drafts_ptr, kind_ptr, walk_ptr, best_ptr, best_idx_ptr, accepted_ptr, token_ptr, S2,
    SPLITS2: tl.constexpr,
):
    b = tl.program_id(0)
    m = tl.load(num_drafts_ptr + b)
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


def launch_verify(ar_logits: torch.Tensor, draft_logits: torch.Tensor, drafts: torch.Tensor, num_drafts: torch.Tensor,
                  kind: torch.Tensor, scale: torch.Tensor, accept_uniforms: torch.Tensor, noise: torch.Tensor,
                  banned_id: int = -1, given_noise: bool = False, block_v: int = 1024, stats_splits: int | None = None,
                  sample_splits: int | None = None, num_warps: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The three kernels on prepared inputs. Returns (accepted (B,) int32, token (B,) int32).

    kind (B,) sampler codes; scale (B, 2) fp32 (1 / temperature, mix weight: 1 for unmixed slots);
    accept_uniforms (B, M) fp32 in [0, 1); noise: (B, M+1) int64 stream keys, or with given_noise the
    Gumbel noise (B, M+1, V) fp32. stats_splits / sample_splits: vocabulary splits of pass 1 / pass 2;
    by default chosen on the host from V, the batch and the device's SM count (no synchronisation)."""
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
    accepted = torch.full((B,), -7, dtype=torch.int32, device=device)  # poisoned: every slot must be written
    token = torch.full((B,), -7, dtype=torch.int32, device=device)
    # workspaces: torch.empty (tests poison them with NaN / -7; no entry is read before it is written)
    stats = torch.empty((B * M, 4, S1), dtype=torch.float32, device=device)
    argmax = torch.empty((B * M, S1), dtype=torch.int32, device=device)
    walk = torch.empty((B, 2), dtype=torch.int32, device=device)
    best = torch.empty((B, 2, S2), dtype=torch.float32, device=device)
    best_idx = torch.empty((B, 2, S2), dtype=torch.int32, device=device)
    dummy = torch.zeros(1, dtype=torch.float32, device=device)
    ar = ar_logits.float().contiguous()
    draft = draft_logits.float().contiguous() if M else dummy
    num = num_drafts.to(torch.int32).contiguous()
    kind = kind.to(torch.int32).contiguous()
    scale = scale.float().contiguous()
    if B * M:
        verify_stats_kernel[(S1, B * M)](
            ar, draft, num, kind, scale, stats, argmax, V, M, S1, per1, banned_id,
            BLOCK_V=block_v, num_warps=num_warps)
    verify_sample_kernel[(S2, B)](
        ar, draft, drafts.contiguous() if M else dummy.long(), num, kind, scale,
        accept_uniforms.float().contiguous() if M else dummy, noise.contiguous(),
        stats, argmax, walk, best, best_idx, V, M, S1, S2, per2, banned_id,
        GIVEN_NOISE=given_noise, BLOCK_V=block_v, ROWS=min(16, triton.next_power_of_2(max(M, 1))),
        SPLITS1=triton.next_power_of_2(S1), num_warps=num_warps)
    verify_finish_kernel[(B,)](num, kind, walk, best, best_idx, accepted, token, S2,
                               SPLITS2=triton.next_power_of_2(S2), num_warps=1)
    return accepted, token


def keyed_randomness(seed: torch.Tensor, first_position: torch.Tensor, M: int):
    """(acceptance uniforms (B, M) fp32, Gumbel stream keys (B, M+1) int64) of slots whose draft d_1 sits at
    first_position: keyed on (seed, token position, purpose) as the engine's torch verifier keys them."""
    rows = torch.arange(M + 1, device=seed.device)[None, :]
    positions = first_position[:, None] + rows
    u = uniforms(seed[:, None], positions[:, :M], ACCEPT).float().clamp_max(BELOW_ONE)
    return u, stream_keys(seed[:, None], positions, RESAMPLE)


def _kernel_inputs(ar_logits, draft_logits, num_drafts, kind, temperature, top_k, top_p, mix_weight, banned,
                   filtered: bool):
    """(target logits, draft logits, scale (B, 2)) as the kernels read them. Unfiltered: the raw logits with
    each slot's 1 / temperature and mix weight (1 for unmixed samplers). Filtered (top-k / top-p, which need
    a sort): mixed, tempered, banned and filtered on the device here, then read at unit scale."""
    B, M = draft_logits.shape[:2]
    if filtered:
        target = mixed_targets(ar_logits, draft_logits, num_drafts, kind, mix_weight)
        target = process_logits(target, temperature, top_k, top_p, banned, True)
        draft = process_logits(draft_logits, temperature, top_k, top_p, banned, True)
        return target, draft, torch.ones(B, 2, device=ar_logits.device)
    mix = torch.where(kind == LOGIT_MIX, mix_weight.float(), 1.0)
    return ar_logits, draft_logits, torch.stack([1.0 / temperature.float(), mix], dim=1)


def fused_verify_slots(ar_logits: torch.Tensor, draft_logits: torch.Tensor, drafts: torch.Tensor,
                       num_drafts: torch.Tensor, first_position: torch.Tensor, kind: torch.Tensor,
                       temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                       mix_weight: torch.Tensor, seed: torch.Tensor, banned_id: int, filtered: bool,
                       given: tuple[torch.Tensor, torch.Tensor] | None = None,
                       **launch) -> tuple[torch.Tensor, torch.Tensor]:
    """The engine's verifier: `batched_sampling.verify`'s arguments and results ((n, token) int64 (S,)), on the
    fused kernels. Every slot brings its own sampler; banned_id (-1: none) is never produced; `filtered`:
    some slot uses top-k / top-p. No host synchronisation. given: (uniforms (S, M), Gumbel noise
    (S, M+1, V)) instead of the keyed draws, for draw-for-draw tests."""
    M = ar_logits.shape[1] - 1
    banned = None
    if filtered and banned_id >= 0:
        banned = torch.full((1,), banned_id, dtype=torch.long, device=ar_logits.device)
    ar, draft, scale = _kernel_inputs(ar_logits, draft_logits[:, :M], num_drafts, kind, temperature, top_k, top_p,
                                      mix_weight, banned, filtered)
    u, noise = keyed_randomness(seed, first_position, M) if given is None else given
    accepted, token = launch_verify(ar, draft, drafts[:, :M], num_drafts, kind, scale, u, noise, banned_id,
                                    given is not None, **launch)
    return accepted.long(), token.long()


def fused_verify(ar_logits: torch.Tensor, draft_logits: torch.Tensor, drafts: torch.Tensor, num_drafts: torch.Tensor,
                 params: SamplingParams, seed: int = 0, uniforms: torch.Tensor | None = None,
                 gumbel: torch.Tensor | None = None, **launch) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify B sequences sharing one sampler. Returns (accepted (B,) int32, token (B,) int32) on the logits' device.

    Randomness: given (uniforms (B, M) and gumbel (B, M+1, V), for draw-for-draw tests), or keyed on
    (seed, b * (M + 1) + row): a batch-level seed, so a sequence's draws depend on its index here; the
    engine keys them on each request's own seed and token positions (`fused_verify_slots`).
    launch: block_v, stats_splits, sample_splits, num_warps (see `launch_verify`)."""
    B, M1, V = ar_logits.shape
    M = M1 - 1
    if draft_logits.shape != (B, M, V) or drafts.shape != (B, M) or num_drafts.shape != (B,):
        raise ValueError(f"shape mismatch: ar {tuple(ar_logits.shape)}, draft {tuple(draft_logits.shape)}, "
                         f"drafts {tuple(drafts.shape)}, num_drafts {tuple(num_drafts.shape)}")
    check_draft_ids(drafts, num_drafts, V)
    device = ar_logits.device

    def per_slot(value, dtype=torch.float32):
        return torch.full((B,), value, dtype=dtype, device=device)

    kind = per_slot(KIND_CODES[params.kind], torch.int32)
    num = num_drafts.to(device)
    # a second banned id goes through the device-side filtering, like top-k / top-p
    filtered = bool(params.top_k) or params.top_p < 1.0 or len(params.banned) > 1
    banned = torch.tensor(params.banned, dtype=torch.long, device=device) if filtered and params.banned else None
    ar, draft, scale = _kernel_inputs(ar_logits, draft_logits, num, kind, per_slot(params.temperature),
                                      per_slot(params.top_k, torch.long), per_slot(params.top_p),
                                      per_slot(params.mix_weight), banned, filtered)
    banned_id = params.banned[0] if params.banned and not filtered else -1
    if uniforms is not None:
        assert gumbel is not None and uniforms.shape == (B, M) and gumbel.shape == (B, M + 1, V)
        u, noise, given = uniforms.to(device), gumbel.to(device), True
    else:
        u, noise = keyed_randomness(per_slot(seed, torch.long), torch.arange(B, device=device) * M1, M)
        given = False
    return launch_verify(ar, draft, drafts, num, kind, scale, u, noise, banned_id, given, **launch)


def aot_kernels(given_noise: bool, block_v: int = 1024, rows: int = 16, splits1: int = MAX_STATS_SPLITS,
                splits2: int = MAX_SAMPLE_SPLITS) -> list[tuple]:
    """(name, kernel, signature, constexprs, num_warps) of the verifier's three kernels, for AOT compilation."""
    i32 = "i32"
    stats = {"ar_logits_ptr": "*fp32", "draft_logits_ptr": "*fp32", "num_drafts_ptr": "*i32", "kind_ptr": "*i32",
             "scale_ptr": "*fp32", "stats_ptr": "*fp32", "argmax_ptr": "*i32", "V": i32, "M": i32, "S1": i32,
             "chunks_per_split": i32, "banned_id": i32, "BLOCK_V": "constexpr"}
    sample = {"ar_logits_ptr": "*fp32", "draft_logits_ptr": "*fp32", "drafts_ptr": "*i64", "num_drafts_ptr": "*i32",
              "kind_ptr": "*i32", "scale_ptr": "*fp32", "uniforms_ptr": "*fp32",
              "noise_ptr": "*fp32" if given_noise else "*i64", "stats_ptr": "*fp32", "argmax_ptr": "*i32",
              "walk_ptr": "*i32", "best_ptr": "*fp32", "best_idx_ptr": "*i32", "V": i32, "M": i32, "S1": i32,
              "S2": i32, "chunks_per_split": i32, "banned_id": i32, "GIVEN_NOISE": "constexpr",
              "BLOCK_V": "constexpr", "ROWS": "constexpr", "SPLITS1": "constexpr"}
    finish = {"num_drafts_ptr": "*i32", "kind_ptr": "*i32", "walk_ptr": "*i32", "best_ptr": "*fp32",
              "best_idx_ptr": "*i32", "accepted_ptr": "*i32", "token_ptr": "*i32", "S2": i32, "SPLITS2": "constexpr"}
    return [
        ("verify_stats", verify_stats_kernel, stats, {"BLOCK_V": block_v}, 4),
        ("verify_sample", verify_sample_kernel, sample,
         {"GIVEN_NOISE": given_noise, "BLOCK_V": block_v, "ROWS": rows, "SPLITS1": splits1}, 4),
        ("verify_finish", verify_finish_kernel, finish, {"SPLITS2": splits2}, 1),
    ]
