"""Device-resident decoding state for a fixed number of slots: the KV + CCA cache with a
fixed-shape commit, and the layout of one step computed from per-slot tensors.

The cache keeps `LayerCache`'s interface (k, v, state_qk, state_delayed, stash_*), which the
reference and the generated model both read, but commits every slot at once: the first `rows`
rows of this pass are written at each slot's length, and the lengths advance by each slot's
accepted count. Rows past the count land beyond the slot's length, where nothing reads them
and the next commit overwrites them, so rejected rows cost nothing and no shape depends on
acceptance (a CUDA/HIP graph replays the commit as is). The buffers hold `block_size` spare
positions past `max_len` for those writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..spec import ModelSpec
from .cache import LayerCache


class SlotCache:
    def __init__(self, spec: ModelSpec, slots: int, max_len: int, spare: int, dtype, device):
        self.capacity = max_len + spare
        self.layers = [LayerCache(spec, slots, self.capacity, dtype, device) for _ in range(spec.num_layers)]
        self.receptive_field = self.layers[0].receptive_field

    @property
    def max_len(self) -> int:
        """Key slots per sequence (the width of the cache part of a dense mask)."""
        return self.capacity

    def view(self, start: int, stop: int) -> "SlotCache":
        """Slots [start, stop) sharing this cache's storage (a graph bucket or a prefill slot)."""
        sub = object.__new__(SlotCache)
        sub.capacity, sub.receptive_field = self.capacity, self.receptive_field
        sub.layers = []
        for layer in self.layers:
            part = object.__new__(LayerCache)
            part.k, part.v = layer.k[start:stop], layer.v[start:stop]
            part.state_qk, part.state_delayed = layer.state_qk[start:stop], layer.state_delayed[start:stop]
            part.receptive_field, part.pending = layer.receptive_field, {}
            sub.layers.append(part)
        return sub

    @torch.no_grad()
    def commit(self, lengths: torch.Tensor, counts: torch.Tensor, rows: int) -> None:
        """Append rows [0, counts[s]) of this pass to every slot s; `rows` >= max(counts) rows are written.

        lengths (S,) int64 before the commit (not modified here); counts (S,) int64, 0 for idle slots."""
        rf = self.receptive_field
        at = (lengths[:, None] + torch.arange(rows, device=lengths.device)).clamp_max(self.capacity - 1)
        for layer in self.layers:
            for name in ("k", "v"):
                new = layer.pending[name][:, :rows]
                buffer = getattr(layer, name)
                buffer.scatter_(1, at[:, :, None, None].expand_as(new), new.to(buffer.dtype))
            if rf:
                # the new state is the last rf rows of [old state | accepted rows]
                keep = (counts[:, None] + torch.arange(rf, device=counts.device))[..., None]
                for name, state in (("qk", layer.state_qk), ("delayed", layer.state_delayed)):
                    joined = torch.cat([state, layer.pending[name][:, :rows].to(state.dtype)], dim=1)
                    state.copy_(joined.gather(1, keep.expand(-1, -1, state.shape[-1])))
            layer.pending.clear()

    def reset_slot(self, slot: int) -> None:
        for layer in self.layers:
            layer.state_qk[slot].zero_()
            layer.state_delayed[slot].zero_()


@dataclass(frozen=True)
class StepLayout:
    """A decode-kind layout whose per-slot numbers are device tensors (duck-types BatchLayout).

    Rows of slot s: causal_rows[s] verify rows (c and its drafts; or a prefill chunk), then
    (rows[s] - causal_rows[s]) / block_size proposal blocks at `levels`, then padding."""

    block_size: int
    levels: tuple[int, ...]
    cache_lengths: torch.Tensor  # (S,) int32
    causal_rows: torch.Tensor  # (S,) int32
    rows: torch.Tensor  # (S,) int32
    anchors: torch.Tensor  # (max(1, len(levels)),) int64: block j sees verify rows [0, anchors[j])
    kind: str = "decode"

    @property
    def batch(self) -> int:
        return self.rows.shape[0]

    def tensors(self, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.cache_lengths, self.causal_rows, self.rows

    def dense_visible(self, padded_rows: int, cache_slots: int = 0) -> torch.Tensor:
        """(S, T, cache_slots + T) bool, the reference model's mask, built on the device.

        The rule of BatchLayout.dense_visible for the decode kind: cached keys below the slot's
        length; causal among the verify rows; block j sees verify rows [0, levels[j] + 1) and itself;
        padding rows see only themselves."""
        device = self.rows.device
        T = padded_rows
        r = torch.arange(T, device=device)[None, :, None]  # query row
        u = torch.arange(T, device=device)[None, None, :]  # new key
        causal, n = self.causal_rows.long()[:, None, None], self.rows.long()[:, None, None]
        j = ((r - causal).clamp_min(0) // self.block_size)
        anchor = self.anchors[j.clamp_max(self.anchors.shape[0] - 1)]
        start = causal + j * self.block_size
        in_block = (r >= causal) & (r < n)
        new = torch.where(r < causal, u <= r, in_block & ((u < anchor) | ((u >= start) & (u < start + self.block_size))))
        new = new | ((r >= n) & (u == r))
        cached = (torch.arange(cache_slots, device=device)[None, None, :] < self.cache_lengths.long()[:, None, None]) & (r < n)
        return torch.cat([cached, new], dim=-1)
