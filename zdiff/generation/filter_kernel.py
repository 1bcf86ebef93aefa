"""Top-k / top-p filtering in one Triton launch: per-row thresholds found by a multi-pivot search, no sort.

`batched_sampling.process_logits` (the torch backend and the reference loop) sorts the vocabulary; a sort is
~30 torch launches per side and a full fp32 copy in and out. This kernel computes the same function of the
same inputs in one launch per logits tensor: one program per row tempers (and, for the verifier's target rows,
logit-mixes) the raw logits, bans the banned id, then finds the row's keep threshold tau and writes
`z if z >= tau else -inf` (fp32, unit scale: what the verifier's and the draft sampler's PROCESSED kernels read).

The rule, shared with `process_logits` (ties at either threshold are kept):
  top-k: tau_k = the k-th largest z (k = 0: off);
  top-p: among z >= tau_k with p = softmax, keep z iff the mass strictly above z is < top_p (top_p >= 1: off),
  so tau = the smallest kept z. The top token is always kept.

Search: z is mapped to an int32 key that orders like the float (`_ordered_key`); a bracket [lo, hi] of keys
with pred(lo) true and pred(hi) false shrinks by PIVOTS + 1 per pass over the row (each pass evaluates PIVOTS
keys at once: a count for top-k, a softmax mass for top-p), so ~32 / log2(PIVOTS + 1) passes per threshold.
Counts are exact; masses are fp32 sums in a different order than the torch cumsum, so the two backends can
differ only when a prefix mass is within rounding of top_p (a measure-zero event for real logits; the tests
use random logits and ties). Cost: ~2 + 2 x 7 passes over each filtered row, only on steps where some slot
uses top-k / top-p.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .logit_mix import _mix
from .vocab_kernels import LOGIT_MIX_CODE, NEG_INF

KEY_MIN = tl.constexpr(-2147483648)
KEY_MAX = tl.constexpr(2147483647)


@triton.jit
def _ordered_key(z):
    """An int32 that orders like the fp32 z (IEEE bits, negatives' magnitude bits flipped); -inf is the lowest
    key any real logit can have."""
    bits = z.to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _row_chunk(src_row, mix_row, idx, V, banned_id, inv_temperature, mix_weight, mixing):
    """(z, in_vocab) of one chunk: tempered (and mixed, on a mixing row) logits; -inf on the ban and past V."""
    in_vocab = idx < V
    valid = in_vocab & (idx != banned_id)
    za = tl.load(src_row + idx, mask=valid, other=0.0).to(tl.float32)
    if mixing:
        zd = tl.load(mix_row + idx, mask=valid, other=0.0).to(tl.float32)
        za = _mix(za, zd, mix_weight)
    return tl.where(valid, za * inv_temperature, NEG_INF), in_vocab


@triton.jit
def _pivots(lo, hi, pivot_index, PIVOTS: tl.constexpr):
    """PIVOTS keys spread evenly strictly inside the bracket (lo, hi), as int64."""
    step = (hi - lo + PIVOTS) // (PIVOTS + 1)
    return tl.minimum(lo + step * (pivot_index + 1).to(tl.int64), hi - 1)


@triton.jit
def _narrow(lo, hi, pivots, low_side):
    """The bracket after one pass: low_side[j] says pivot j is on lo's side (where lo's predicate holds)."""
    return (tl.maximum(lo, tl.max(tl.where(low_side, pivots, lo), 0)),
            tl.minimum(hi, tl.min(tl.where(low_side, hi, pivots), 0)))


@triton.jit
def _search(src_row, mix_row, offs, V, banned_id, inv_temperature, mix_weight, mixing, num_chunks, lo, hi, need,
            tau, shift, BLOCK_V: tl.constexpr, PIVOTS: tl.constexpr, MASS: tl.constexpr):
    """Shrink the key bracket (lo, hi) to adjacent keys, PIVOTS + 1 times per pass over the row. The statistic
    of a pivot t: count(key >= t) (MASS False) or the softmax mass (shifted by `shift`) of keys > t among keys
    >= tau (MASS True); t is on lo's side while the statistic is >= need."""
    pivot_index = tl.arange(0, PIVOTS)
    while hi - lo > 1:
        pivots = _pivots(lo, hi, pivot_index, PIVOTS)
        statistic = tl.zeros((PIVOTS,), tl.float32)
        for c in range(0, num_chunks):
            z, in_vocab = _row_chunk(src_row, mix_row, c * BLOCK_V + offs, V, banned_id, inv_temperature,
                                     mix_weight, mixing)
            key = _ordered_key(z)
            if MASS:
                above = (key[:, None] > pivots.to(tl.int32)[None, :]) & (key.to(tl.int64) >= tau)[:, None]
                statistic += tl.sum(tl.where(above, tl.exp(z - shift)[:, None], 0.0), 0)
            else:
                above = (key[:, None] >= pivots.to(tl.int32)[None, :]) & in_vocab[:, None]
                statistic += tl.sum(above.to(tl.float32), 0)
        lo, hi = _narrow(lo, hi, pivots, statistic >= need)
    return lo, hi


@triton.jit
def filter_logits_kernel(
    src_ptr, mix_ptr, out_ptr, num_drafts_ptr, kind_ptr, temperature_ptr, top_k_ptr, top_p_ptr, weight_ptr,
    V, N, MIX_ROWS, num_chunks, banned_id,
    BLOCK_V: tl.constexpr, PIVOTS: tl.constexpr,
):
    """Grid (S * N,): row i of slot b (N rows per slot). src (S, N, V) raw logits in the model dtype; mix
    (S, MIX_ROWS, V): the draft logits a logit-mix slot's row i < min(num_drafts, MIX_ROWS) mixes in
    (MIX_ROWS = 0: no mixing); out (S, N, V) fp32 processed logits."""
    row = tl.program_id(0)
    b = row // N
    i = row - b * N
    kind = tl.load(kind_ptr + b)
    mixing = (kind == LOGIT_MIX_CODE) & (i < MIX_ROWS) & (i < tl.load(num_drafts_ptr + b))
    mix_weight = tl.load(weight_ptr + b)
    inv_temperature = 1.0 / tl.load(temperature_ptr + b)
    top_k = tl.minimum(tl.load(top_k_ptr + b), V).to(tl.int32)
    top_p = tl.load(top_p_ptr + b)
    src_row = src_ptr + row.to(tl.int64) * V
    mix_row = mix_ptr + (b.to(tl.int64) * MIX_ROWS + i) * V
    out_row = out_ptr + row.to(tl.int64) * V
    offs = tl.arange(0, BLOCK_V)

    # pass 1: the row's largest z (the softmax shift and the top of every bracket)
    top = tl.full((BLOCK_V,), NEG_INF, tl.float32)
    for c in range(0, num_chunks):
        z, _ = _row_chunk(src_row, mix_row, c * BLOCK_V + offs, V, banned_id, inv_temperature, mix_weight, mixing)
        top = tl.maximum(top, z)
    top_z = tl.max(top, 0)
    top_key = _ordered_key(top_z).to(tl.int64)

    # top-k: the largest key t with count(key >= t) >= k; KEY_MIN qualifies (every in-vocabulary lane counts)
    tau = tl.full((), KEY_MIN, tl.int64)
    if top_k > 0:
        tau, _ = _search(src_row, mix_row, offs, V, banned_id, inv_temperature, mix_weight, mixing, num_chunks,
                         tl.full((), KEY_MIN, tl.int64), top_key + 1, top_k.to(tl.float32), tau, 0.0,
                         BLOCK_V, PIVOTS, False)
    # top-p: the smallest key t >= tau_k with mass(key > t) < top_p * mass(key >= tau_k)
    if top_p < 1.0:
        shift = tl.where(top_z == NEG_INF, 0.0, top_z)
        total = tl.zeros((BLOCK_V,), tl.float32)
        for c in range(0, num_chunks):
            z, _ = _row_chunk(src_row, mix_row, c * BLOCK_V + offs, V, banned_id, inv_temperature, mix_weight,
                              mixing)
            total += tl.where(_ordered_key(z).to(tl.int64) >= tau, tl.exp(z - shift), 0.0)
        _, tau = _search(src_row, mix_row, offs, V, banned_id, inv_temperature, mix_weight, mixing, num_chunks,
                         tau - 1, top_key, top_p * tl.sum(total, 0), tau, shift, BLOCK_V, PIVOTS, True)

    # the last pass: z where it is kept, -inf elsewhere
    for c in range(0, num_chunks):
        idx = c * BLOCK_V + offs
        z, in_vocab = _row_chunk(src_row, mix_row, idx, V, banned_id, inv_temperature, mix_weight, mixing)
        tl.store(out_row + idx, tl.where(_ordered_key(z).to(tl.int64) >= tau, z, NEG_INF), mask=in_vocab)


def launch_filter(logits: torch.Tensor, kind: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                  top_p: torch.Tensor, banned_id: int, mix_logits: torch.Tensor | None = None,
                  num_drafts: torch.Tensor | None = None, mix_weight: torch.Tensor | None = None,
                  block_v: int = 256, pivots: int = 16, num_warps: int = 4) -> torch.Tensor:
    """fp32 (S, N, V) processed logits of raw logits (S, N, V) (model dtype, contiguous): what
    `process_logits(mixed_targets(...))` returns, in one launch. mix_logits (S, D, V), num_drafts (S,),
    mix_weight (S,): logit-mix slots mix row i < num_drafts with mix_logits[:, i] (the verifier's targets);
    None: no mixing (draft rows). kind, top_k (S,) int64; temperature, top_p (S,) fp32."""
    S, N, V = logits.shape
    out = torch.empty((S, N, V), dtype=torch.float32, device=logits.device)
    if S * N == 0:
        return out
    block_v = min(block_v, triton.next_power_of_2(V))
    mixing = mix_logits is not None and mix_logits.shape[1] > 0
    # without mixing (MIX_ROWS = 0) nothing read through the mix pointers is used: any tensor of the right type will do
    mix = mix_logits if mixing else logits
    filter_logits_kernel[(S * N,)](
        logits, mix, out, num_drafts if mixing else kind, kind, temperature, top_k, top_p,
        mix_weight if mixing else temperature, V, N, mix_logits.shape[1] if mixing else 0, triton.cdiv(V, block_v),
        banned_id, BLOCK_V=block_v, PIVOTS=pivots, num_warps=num_warps)
    return out


def aot_kernels(logits: str = "bf16", block_v: int = 256, pivots: int = 16) -> list[tuple]:
    """(name, kernel, signature, constexprs, num_warps) of the filter kernel, for AOT compilation."""
    signature = {"src_ptr": f"*{logits}", "mix_ptr": f"*{logits}", "out_ptr": "*fp32", "num_drafts_ptr": "*i64",
                 "kind_ptr": "*i64", "temperature_ptr": "*fp32", "top_k_ptr": "*i64", "top_p_ptr": "*fp32",
                 "weight_ptr": "*fp32", "V": "i32", "N": "i32", "MIX_ROWS": "i32", "num_chunks": "i32",
                 "banned_id": "i32", "BLOCK_V": "constexpr", "PIVOTS": "constexpr"}
    return [("filter_logits", filter_logits_kernel, signature, {"BLOCK_V": block_v, "PIVOTS": pivots}, 4)]
