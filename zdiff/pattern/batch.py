"""The structure of one batched forward pass, in the few numbers the attention kernels read.

A `Pattern` spells out every row of one sequence; a batch of them, as the generation loop
and the trainer build it, is always one of the three TiDAR layouts with per-sequence sizes:
- training: rows [clean x S | masks x S] (causal_rows = S; no proposal rows for AR training);
- prefill:  [prompt | one mask block] (causal_rows = prompt length; no block for AR prefill);
- decode:   [verify rows | proposal blocks at the spec's first levels] after cache_lengths keys.
`dense_visible` turns a layout back into the boolean mask the reference model reads, so the
kernels and the reference are driven by the same object; both evaluate the one visibility rule of
`visibility.py`. Code that holds the per-sequence numbers only as device tensors (the decode
engine) uses `visibility.dense_visible` / `layout_visible` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from ..errors import ZdiffError
from .segments import Pattern
from .visibility import KINDS, dense_visible


@dataclass(frozen=True)
class BatchLayout:
    kind: str  # training | prefill | decode
    block_size: int
    levels: tuple[int, ...]  # decode: acceptance level of each proposal block, in row order (a prefix per sequence)
    cache_lengths: tuple[int, ...]  # keys already in the KV cache (decode), zeros otherwise
    causal_rows: tuple[int, ...]  # leading causal rows: clean half / prompt / verify rows
    rows: tuple[int, ...]  # valid rows of this pass; the rest of the padded length is padding
    # None: every row routes freely; m >= 0: the rows past the causal rows choose among the experts the causal
    # rows chose, plus m by router mass (zdiff.runtime.moe.draft_restriction; the model reads it)
    draft_expert_budget: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ZdiffError(f"layout kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not len(self.cache_lengths) == len(self.causal_rows) == len(self.rows):
            raise ZdiffError("layout: cache_lengths, causal_rows and rows need one entry per sequence")
        for c, r in zip(self.causal_rows, self.rows):
            if not 0 <= c <= r or (r - c) % self.block_size and self.kind != "training":
                raise ZdiffError(f"layout: {r} rows with {c} causal rows do not make whole blocks of {self.block_size}")

    @property
    def batch(self) -> int:
        return len(self.rows)

    @classmethod
    def training(cls, batch: int, seq_len: int, block_size: int, diffusion: bool = True,
                 draft_expert_budget: int | None = None) -> "BatchLayout":
        """[x | M x S] (diffusion) or a plain causal sequence of seq_len rows."""
        rows = 2 * seq_len if diffusion else seq_len
        return cls("training", block_size, (), (0,) * batch, (seq_len,) * batch, (rows,) * batch, draft_expert_budget)

    @classmethod
    def of_patterns(cls, patterns: list[Pattern | None], block_size: int) -> "BatchLayout":
        """The layout of a batch of per-sequence patterns (None: a finished sequence, all padding)."""
        kinds = {p.layout for p in patterns if p is not None} - {"causal"}
        if len(kinds) > 1:
            raise ZdiffError(f"one forward pass cannot mix layouts {sorted(kinds)}")
        has_cache = any(p is not None and p.query_start > 0 for p in patterns)
        kind = kinds.pop() if kinds else ("decode" if has_cache else "prefill")
        cache, causal, rows, levels = [], [], [], ()
        for p in patterns:
            if p is None:
                cache.append(0), causal.append(0), rows.append(0)
                continue
            first = next(s for s in p.segments if s.query)
            cache.append(p.query_start)
            causal.append(first.length)
            rows.append(p.num_rows - p.query_start)
            if len(p.levels) > len(levels):
                levels = p.levels
        for p in patterns:
            if p is not None and p.levels != levels[: len(p.levels)]:
                raise ZdiffError(f"decode levels {list(p.levels)} are not a prefix of {list(levels)}")
        return cls(kind, block_size, levels, tuple(cache), tuple(causal), tuple(rows))

    def tensors(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cache_lengths, causal_rows, rows) as int32 tensors on `device` (copied once per layout)."""
        key = str(device)
        if key not in self._tensors:
            self._tensors[key] = tuple(torch.tensor(x, dtype=torch.int32, device=device)
                                       for x in (self.cache_lengths, self.causal_rows, self.rows))
        return self._tensors[key]

    @cached_property
    def _tensors(self) -> dict:
        return {}

    def dense_visible(self, padded_rows: int, cache_slots: int = 0) -> torch.Tensor:
        """(B, padded_rows, cache_slots + padded_rows) bool on the CPU: keys [cache slots | this pass's rows].

        Padding rows see only themselves (the reference needs every row to see something)."""
        return layout_visible(self, padded_rows, cache_slots, "cpu")


def layout_visible(layout, padded_rows: int, cache_slots: int = 0, device="cpu") -> torch.Tensor:
    """The dense mask of any layout-like object (`.kind`, `.block_size`, `.levels`, `.tensors(device)`), built
    on `device` from its tensors without a host synchronisation."""
    return dense_visible(layout.kind, layout.block_size, tuple(layout.levels), *layout.tensors(device),
                         padded_rows, cache_slots)
