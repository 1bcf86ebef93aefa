"""TiDAR attention patterns as segments with interval visibility rules.

Glossary
- row: one token slot of a forward pass. The brute-force row space of a pattern holds every
  token the pass depends on, including committed context that a KV cache would normally
  supply; `query_start` says where the rows computed by the pass begin.
- key: rows and keys share one index space (key k is row k's token).
- position: the RoPE position of a row.
- predecessor: the row whose token came just before this one (-1: none). It drives the CCA
  convolutions and the delayed value half; in a proposal block it is not "row - 1".
- KeyRange(lo, hi): keys lo <= k < hi; hi=None means "up to and including this row"
  (causal). A row sees the union of its segment's ranges.

Every rule is affine in the row index with a constant lower bound and an upper bound that
is constant or row + 1, so the set of keys a row sees only grows along a segment. That
monotonicity is what makes exact tile classification cheap (see `tiles.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class KeyRange:
    lo: int
    hi: int | None  # None: causal, i.e. row + 1

    def upper(self, row: int) -> int:
        return row + 1 if self.hi is None else self.hi


@dataclass(frozen=True)
class Segment:
    name: str  # "context", "verify", "clean", "mask[3]", "proposal[a=2]", ...
    start: int  # first row
    length: int
    position0: int  # position of the first row; +1 per row
    first_predecessor: int  # predecessor row of the first row (-1: none); later rows follow row - 1
    visible: tuple[KeyRange, ...]
    query: bool = True  # computed by this pass (False: supplied by the KV cache / CCA state)

    @property
    def stop(self) -> int:
        return self.start + self.length

    def keys_of(self, row: int) -> list[tuple[int, int]]:
        """Merged, sorted [lo, hi) intervals of the keys `row` sees."""
        spans = sorted((r.lo, r.upper(row)) for r in self.visible if r.upper(row) > r.lo)
        merged: list[list[int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        return [(lo, hi) for lo, hi in merged]


@dataclass(frozen=True)
class Pattern:
    layout: str  # "training" | "prefill" | "decode" | "causal"
    segments: tuple[Segment, ...]
    block_size: int
    levels: tuple[int, ...] = ()  # decode: acceptance level of each proposal block

    def __post_init__(self):
        row = 0
        for seg in self.segments:
            assert seg.start == row and seg.length > 0, f"segments must tile the rows: {seg}"
            row = seg.stop

    @cached_property
    def num_rows(self) -> int:
        return self.segments[-1].stop

    @cached_property
    def query_start(self) -> int:
        return next(s.start for s in self.segments if s.query)

    def segment(self, name: str) -> Segment:
        return next(s for s in self.segments if s.name == name)

    def segment_of_row(self, row: int) -> Segment:
        for seg in self.segments:
            if seg.start <= row < seg.stop:
                return seg
        raise IndexError(row)

    @cached_property
    def _positions(self) -> torch.Tensor:
        return torch.cat([torch.arange(s.length) + s.position0 for s in self.segments])

    def positions(self) -> torch.Tensor:
        return self._positions.clone()

    def predecessors(self) -> torch.Tensor:
        return self._predecessors.clone()

    def query_mask(self) -> torch.Tensor:
        """(query rows, num_rows) bool: the rows this pass computes, against every key."""
        return self._query_mask.clone()

    @cached_property
    def _predecessors(self) -> torch.Tensor:
        parts = []
        for s in self.segments:
            pred = torch.arange(s.start - 1, s.stop - 1)
            pred[0] = s.first_predecessor
            parts.append(pred)
        return torch.cat(parts)

    @cached_property
    def _query_mask(self) -> torch.Tensor:
        return self._mask_from(self.query_start)

    def dense_mask(self) -> torch.Tensor:
        """(num_rows, num_rows) bool, row = query. The brute-force truth every kernel must equal."""
        return self._mask_from(0)

    def _mask_from(self, first_row: int) -> torch.Tensor:
        """The visibility rule (`visibility.dense_visible`) with the context rows as the cache, preceded by
        the context rows themselves (causal)."""
        from .visibility import dense_visible

        C, n = self.query_start, self.num_rows - self.query_start
        causal = next(s for s in self.segments if s.query).length
        kind = "prefill" if self.layout == "causal" else self.layout
        numbers = (torch.tensor([x]) for x in (C, causal, n))  # one sequence: cache, causal rows, rows
        queries = dense_visible(kind, self.block_size, self.levels, *numbers, n, C)[0]
        context = torch.ones(C, self.num_rows, dtype=torch.bool).tril()
        return torch.cat([context, queries])[first_row:]
