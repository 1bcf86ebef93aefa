"""Exact classification of attention tiles as empty / partial / full, without a mask.

Within a segment every row sees a union of key intervals whose lower bounds are constants
and whose upper bounds never decrease with the row, so the set of visible keys only grows
down a segment. Hence, for the rows of one segment inside a tile:
- the tile is full for all of them  <=> it is full for the first one;
- the tile is empty for all of them <=> it is empty for the last one.
Two interval checks per segment piece decide a tile, whatever the sequence lengths; the
same inequalities are what the generated kernels evaluate for partial tiles.
"""

from __future__ import annotations

from enum import IntEnum

import torch

from .segments import Pattern


class Tile(IntEnum):
    EMPTY = 0
    PARTIAL = 1
    FULL = 2


def _covered(intervals: list[tuple[int, int]], lo: int, hi: int) -> bool:
    return any(a <= lo and hi <= b for a, b in intervals)


def _touches(intervals: list[tuple[int, int]], lo: int, hi: int) -> bool:
    return any(a < hi and lo < b for a, b in intervals)


def classify_tile(pattern: Pattern, m0: int, m1: int, n0: int, n1: int) -> Tile:
    """Rows [m0, m1) x keys [n0, n1), clipped to the pattern (ragged edge tiles)."""
    m1, n1 = min(m1, pattern.num_rows), min(n1, pattern.num_rows)
    if m0 >= m1 or n0 >= n1:
        return Tile.EMPTY
    full = empty = True
    for seg in pattern.segments:
        first, last = max(m0, seg.start), min(m1, seg.stop) - 1
        if first > last:
            continue
        full = full and _covered(seg.keys_of(first), n0, n1)
        empty = empty and not _touches(seg.keys_of(last), n0, n1)
    return Tile.FULL if full else Tile.EMPTY if empty else Tile.PARTIAL


def tile_map(pattern: Pattern, block_m: int, block_n: int, queries_only: bool = True) -> torch.Tensor:
    """(row tiles, key tiles) int8 of Tile values; row tiles start at the first query row."""
    start = pattern.query_start if queries_only else 0
    rows = range(start, pattern.num_rows, block_m)
    keys = range(0, pattern.num_rows, block_n)
    return torch.tensor([[classify_tile(pattern, m, m + block_m, n, n + block_n) for n in keys] for m in rows],
                        dtype=torch.int8)


def dense_tile_map(pattern: Pattern, block_m: int, block_n: int, queries_only: bool = True) -> torch.Tensor:
    """The same map computed from the dense mask (for tests and debugging only)."""
    mask = pattern.dense_mask()
    start = pattern.query_start if queries_only else 0
    out = []
    for m in range(start, pattern.num_rows, block_m):
        row = []
        for n in range(0, pattern.num_rows, block_n):
            tile = mask[m:m + block_m, n:n + block_n]
            row.append(Tile.FULL if tile.all() else Tile.EMPTY if not tile.any() else Tile.PARTIAL)
        out.append(row)
    return torch.tensor(out, dtype=torch.int8)
