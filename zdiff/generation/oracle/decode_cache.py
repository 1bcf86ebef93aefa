"""The reference loop's decoding state: one `LayerCache` per layer, lengths per sequence kept on the host."""

from __future__ import annotations

import torch

from ...spec import ModelSpec
from ..cache import LayerCache
from ..rules import state_predecessors


class DecodeCache:
    def __init__(self, spec: ModelSpec, batch: int, max_len: int, dtype=torch.float32, device=None):
        self.max_len = max_len
        self.lengths = [0] * batch
        self.layers = [LayerCache(spec, batch, max_len, dtype, device) for _ in range(spec.num_layers)]
        self.receptive_field = self.layers[0].receptive_field

    def state_predecessors(self, b: int) -> list[int]:
        """Predecessors of the state rows in the extended row space (-1 where the chain ends)."""
        return state_predecessors(torch.tensor([self.lengths[b]]), self.receptive_field)[0].tolist()

    def extended_index(self, b: int, pattern_row: int) -> int:
        """Map a brute-force pattern row (context rows 0..C-1, then new rows) to the extended space."""
        rf, C = self.receptive_field, self.lengths[b]
        if pattern_row < 0:
            return -1
        if pattern_row >= C:
            return rf + pattern_row - C
        if rf == 0:
            return -1  # plain GQA has no convolution state: predecessors are not read
        assert pattern_row >= C - rf, "a predecessor chain reached past the CCA state"
        return pattern_row - (C - rf)

    def commit(self, b: int, rows: list[int]) -> None:
        """Append this pass's new rows `rows` (in order) to sequence b."""
        if not rows:
            return
        if self.lengths[b] + len(rows) > self.max_len:
            raise RuntimeError(f"KV cache overflow: {self.lengths[b]} + {len(rows)} > {self.max_len}")
        index = torch.tensor(rows, device=self.layers[0].k.device)
        for layer in self.layers:
            layer.commit(b, self.lengths[b], index)
        self.lengths[b] += len(rows)
