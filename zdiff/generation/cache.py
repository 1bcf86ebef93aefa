"""Per-layer decoding state: a preallocated KV cache plus the CCA state, with commit and rollback.

Per layer it holds K/V of every committed token (up to `lengths[b]` per sequence) and, for
CCGQA, the *projected* [q|k] rows and delayed-value halves of the last `receptive_field`
committed tokens: exactly what the causal convolutions and the value shift of a new token
can reach. A forward pass only *stashes* its rows' K/V and projections; `commit` appends the
rows that verification accepted. Rejected rows are simply never committed: rollback costs
nothing and recomputes nothing.
"""

from __future__ import annotations

import torch

from ..spec import ModelSpec
from .rules import rolled_state


class LayerCache:
    def __init__(self, spec: ModelSpec, batch: int, max_len: int, dtype, device):
        a = spec.attention
        self.k = torch.zeros(batch, max_len, a.num_kv_heads, a.head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.receptive_field = a.cca.receptive_field if a.kind == "ccgqa" else 0
        channels = (a.num_heads + a.num_kv_heads) * a.head_dim
        self.state_qk = torch.zeros(batch, self.receptive_field, channels, dtype=dtype, device=device)
        self.state_delayed = torch.zeros(batch, self.receptive_field, a.num_kv_heads * a.head_dim // 2,
                                         dtype=dtype, device=device)
        self.pending: dict[str, torch.Tensor] = {}

    def stash_buffers(self, batch: int, rows: int):
        """Preallocated (projection, k, v) outputs for this pass's stash, or None: the producers allocate
        (`slots.SlotCache` hands out stacked scratch so that one kernel commits every layer)."""
        return None

    def stash_projections(self, qk: torch.Tensor, delayed: torch.Tensor) -> None:
        self.pending["qk"], self.pending["delayed"] = qk, delayed

    def stash_kv(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.pending["k"], self.pending["v"] = k, v

    @torch.no_grad()
    def commit(self, b: int, start: int, rows: torch.Tensor) -> None:
        n = len(rows)
        self.k[b, start:start + n] = self.pending["k"][b, rows]
        self.v[b, start:start + n] = self.pending["v"][b, rows]
        if self.receptive_field:
            count = torch.tensor([n], device=rows.device)
            for name, state in (("qk", self.state_qk), ("delayed", self.state_delayed)):
                state[b] = rolled_state(state[b:b + 1], self.pending[name][b, rows][None], count)[0]
