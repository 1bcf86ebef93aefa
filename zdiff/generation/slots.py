"""Device-resident decoding state for a fixed number of slots: the KV + CCA cache with a
fixed-shape commit, and the layout of one step computed from per-slot tensors.

The cache keeps `LayerCache`'s interface (k, v, state_qk, state_delayed, stash_*), which the
reference and the generated model both read, but commits every slot at once: the first `rows`
rows of this pass are written at each slot's length, and the lengths advance by each slot's
accepted count. Rows past the count land beyond the slot's length, where nothing reads them
and the next commit overwrites them, so rejected rows cost nothing and no shape depends on
acceptance (a CUDA/HIP graph replays the commit as is). The buffers hold `block_size` spare
positions past `max_len` for those writes.

Storage is stacked over layers ((L, slots, ...); a layer's `LayerCache` tensors are views), and with
`kernels` the cache keeps stacked scratch for the forward's stash (`stash_buffers`: the CCA projection
GEMM and kernel write there; other stashes are copied in), so the commit is one Triton launch for every
layer (`commit_kernel`); a pass too large for the scratch (a long prefill chunk), or a cache without
`kernels` (the CPU path), commits by torch ops, layer by layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..spec import ModelSpec
from .cache import LayerCache
from .commit_kernel import launch_commit
from .rules import rolled_state


class _SlotLayer(LayerCache):
    """Layer `index` of a SlotCache: views of the stacked storage, and its share of the stash scratch. A stash
    made elsewhere (the reference model, the GQA path) is copied into the scratch when the pass fits, so the
    commit is still one kernel; the CCA host writes there in the first place (no copy)."""

    def __init__(self, owner: "SlotCache", index: int):  # not LayerCache.__init__: it would allocate
        self.owner, self.index = owner, index
        self.k, self.v = owner.k[index], owner.v[index]
        self.state_qk, self.state_delayed = owner.state_qk[index], owner.state_delayed[index]
        self.receptive_field, self.pending = owner.receptive_field, {}

    def stash_buffers(self, batch: int, rows: int):
        return self.owner.stash_buffers(self.index, batch, rows)

    def stash_projections(self, qk: torch.Tensor, delayed: torch.Tensor) -> None:
        buffers = self.stash_buffers(*qk.shape[:2])
        if buffers is not None:
            channels = qk.shape[-1]
            qk = _into(buffers[0][..., :channels], qk)
            delayed = _into(buffers[0][..., channels:channels + delayed.shape[-1]], delayed)
        super().stash_projections(qk, delayed)

    def stash_kv(self, k: torch.Tensor, v: torch.Tensor) -> None:
        buffers = self.stash_buffers(*k.shape[:2])
        if buffers is not None:
            k, v = _into(buffers[1], k), _into(buffers[2], v)
        super().stash_kv(k, v)


def _into(buffer: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """`buffer` holding t's values: t itself when it already is that scratch view (the CCA host wrote it)."""
    if t.data_ptr() != buffer.data_ptr() or t.stride() != buffer.stride():
        buffer.copy_(t)
    return buffer


class SlotCache:
    def __init__(self, spec: ModelSpec, slots: int, max_len: int, spare: int, dtype, device, *,
                 scratch_rows: int = 0, kernels: bool = False):
        """scratch_rows: rows (slots x rows of a pass) of stash scratch per layer, used when `kernels` (then a
        pass of at most that many rows commits in one kernel)."""
        a, L = spec.attention, spec.num_layers
        self.capacity = max_len + spare
        self.receptive_field = a.cca.receptive_field if a.kind == "ccgqa" else 0
        channels, delayed = (a.num_heads + a.num_kv_heads) * a.head_dim, a.num_kv_heads * a.head_dim // 2
        self.k = torch.zeros(L, slots, self.capacity, a.num_kv_heads, a.head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.state_qk = torch.zeros(L, slots, self.receptive_field, channels, dtype=dtype, device=device)
        self.state_delayed = torch.zeros(L, slots, self.receptive_field, delayed, dtype=dtype, device=device)
        # [q | k | v_delayed | v_current], what the CCA host's one projection GEMM writes
        self.projection_width = channels + 2 * delayed if self.receptive_field else 0
        self.scratch_rows = scratch_rows if kernels else 0
        kv = a.num_kv_heads * a.head_dim
        self.kv_scratch = torch.empty(2, L, self.scratch_rows * kv, dtype=dtype, device=device)
        self.proj_scratch = torch.empty(L, self.scratch_rows * self.projection_width, dtype=dtype, device=device)
        self.layers = [_SlotLayer(self, i) for i in range(L)]

    @property
    def max_len(self) -> int:
        """Key slots per sequence (the width of the cache part of a dense mask)."""
        return self.capacity

    def view(self, start: int, stop: int) -> "SlotCache":
        """Slots [start, stop) sharing this cache's storage and scratch (a graph bucket or a prefill slot)."""
        sub = object.__new__(SlotCache)
        sub.__dict__.update(self.__dict__)
        sub.k, sub.v = self.k[:, start:stop], self.v[:, start:stop]
        sub.state_qk, sub.state_delayed = self.state_qk[:, start:stop], self.state_delayed[:, start:stop]
        sub.layers = [_SlotLayer(sub, i) for i in range(len(self.layers))]
        return sub

    def stash_buffers(self, layer: int, batch: int, rows: int):
        """(projection (batch, rows, width), k, v (batch, rows, Hkv, D)) scratch views of `layer` for the
        forward to write its stash into, or None when the pass does not fit (its producers allocate)."""
        if not 0 < batch * rows <= self.scratch_rows or batch != self.k.shape[1]:
            return None
        n, (heads, dim) = batch * rows, self.k.shape[3:]
        projection = self.proj_scratch[layer, : n * self.projection_width].view(batch, rows, self.projection_width)
        k, v = (self.kv_scratch[i, layer, : n * heads * dim].view(batch, rows, heads, dim) for i in range(2))
        return projection, k, v

    def _scratch_pass(self):
        """(batch, rows) of this pass when every layer stashed into its scratch, else None."""
        if not self.scratch_rows:
            return None
        element, channels = self.k.element_size(), self.state_qk.shape[-1]
        first = self.layers[0].pending.get("k")
        if first is None:
            return None
        shape = first.shape[:2]
        for i, layer in enumerate(self.layers):
            p, proj = layer.pending, self.proj_scratch[i].data_ptr()
            names = ("k", "v", "qk", "delayed") if self.receptive_field else ("k", "v")
            if not all(name in p for name in names) or p["k"].shape[:2] != shape:
                return None
            if (p["k"].data_ptr(), p["v"].data_ptr()) != (self.kv_scratch[0, i].data_ptr(),
                                                          self.kv_scratch[1, i].data_ptr()):
                return None
            if self.receptive_field and (p["qk"].data_ptr(), p["delayed"].data_ptr()) != (proj,
                                                                                         proj + channels * element):
                return None
        return shape

    @torch.no_grad()
    def commit(self, lengths: torch.Tensor, counts: torch.Tensor, rows: int) -> None:
        """Append rows [0, counts[s]) of this pass to every slot s; `rows` >= max(counts) rows are written.

        lengths (S,) int64 before the commit (not modified here); counts (S,) int64, 0 for idle slots."""
        scratch = self._scratch_pass()
        if scratch is not None:
            launch_commit(self.kv_scratch, self.proj_scratch, self.k, self.v, self.state_qk, self.state_delayed,
                          lengths, counts, scratch[0], scratch[1], rows)
            for layer in self.layers:
                layer.pending.clear()
        else:
            self.commit_torch(lengths, counts, rows)

    @torch.no_grad()
    def commit_torch(self, lengths: torch.Tensor, counts: torch.Tensor, rows: int) -> None:
        """`commit` as torch ops, layer by layer, from stashes anywhere (the CPU path and the kernel's oracle)."""
        rf = self.receptive_field
        at = (lengths[:, None] + torch.arange(rows, device=lengths.device)).clamp_max(self.capacity - 1)
        for layer in self.layers:
            for name in ("k", "v"):
                new = layer.pending[name][:, :rows]
                buffer = getattr(layer, name)
                buffer.scatter_(1, at[:, :, None, None].expand_as(new), new.to(buffer.dtype))
            if rf:
                for name, state in (("qk", layer.state_qk), ("delayed", layer.state_delayed)):
                    state.copy_(rolled_state(state, layer.pending[name][:, :rows], counts))
            layer.pending.clear()

    def move_slot(self, source: int, target: int) -> None:
        """Slot `target` takes slot `source`'s keys, values and CCA state (compaction), every layer at once."""
        for t in (self.k, self.v, self.state_qk, self.state_delayed):
            t[:, target].copy_(t[:, source])

    def reset_slot(self, slot: int) -> None:
        self.state_qk[:, slot].zero_()
        self.state_delayed[:, slot].zero_()


@dataclass(frozen=True)
class StepLayout:
    """A decode-kind layout whose per-slot numbers are device tensors (duck-types BatchLayout; the
    reference model's mask comes from zdiff.pattern.layout_visible, on the device).

    Rows of slot s: causal_rows[s] verify rows (c and its drafts; or a prefill chunk), then
    (rows[s] - causal_rows[s]) / block_size proposal blocks at `levels`, then padding."""

    block_size: int
    levels: tuple[int, ...]
    cache_lengths: torch.Tensor  # (S,) int32
    causal_rows: torch.Tensor  # (S,) int32
    rows: torch.Tensor  # (S,) int32
    kind: str = "decode"
    # the proposal rows route among the experts the verify rows chose plus this many (runtime.moe
    # .draft_restriction, read by the model with getattr); None: off
    draft_expert_budget: int | None = None

    @property
    def batch(self) -> int:
        return self.rows.shape[0]

    def tensors(self, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.cache_lengths, self.causal_rows, self.rows
