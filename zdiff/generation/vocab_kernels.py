"""Building blocks of the split-vocabulary kernels (the verifier, the draft sampler): lane-wise running maxima
with first-index ties, their reduction, and how many vocabulary splits a launch uses.

A split-vocabulary kernel gives each program one (row, split) pair; every program keeps a lane-wise best
(`_lane_best`, strict > so the first index wins, as one program walking the vocabulary in order would) and
reduces it at the end (`_reduce_best`, ties to the smallest index), and a small combine kernel picks the
winner over the splits the same way. `vocab_splits` sizes the splits from the device's SM count on the host
(a cached property query: no synchronisation).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .batched_sampling import GREEDY, LOGIT_MIX

NEG_INF = tl.constexpr(float("-inf"))
# keeps tl.log away from 0 in discarded lanes; a normal fp32 (1e-38 made Triton 3.6 widen to fp64)
TINY = tl.constexpr(1e-30)
BIG_INDEX = tl.constexpr(2147483647)
GREEDY_CODE = tl.constexpr(GREEDY)  # the per-slot sampler codes, as the kernels compare them
LOGIT_MIX_CODE = tl.constexpr(LOGIT_MIX)


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


