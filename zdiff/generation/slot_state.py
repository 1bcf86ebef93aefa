"""Per-slot decoding state as device tensors: everything one step reads and writes.

A slot is a row of every tensor here. The host writes a slot when it admits a request (one
small fill per field) and otherwise only reads the step's output packet, one step late. Every
update inside a step is in place (`copy_`), so a captured CUDA/HIP graph replays it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

# packet columns after the block_size token columns
COUNT, DONE, ACCEPTED, WAS_ACTIVE = range(4)
PACKET_EXTRA = 4


@dataclass
class SlotState:
    active: torch.Tensor  # (S,) bool: decoding (not finished, not free)
    tidar: torch.Tensor  # (S,) bool: drafts and verifies (False: plain AR sampling)
    cache_len: torch.Tensor  # (S,) int64: tokens in the KV cache (the pending token is not)
    pending: torch.Tensor  # (S,) int64: c, the last committed token
    drafts: torch.Tensor  # (S, b-1) int64
    num_drafts: torch.Tensor  # (S,) int64
    draft_logits: torch.Tensor  # (S, b-1, V) model dtype: raw logits the drafts were sampled from
    generated: torch.Tensor  # (S,) int64: tokens delivered so far
    max_new: torch.Tensor  # (S,) int64
    stop_ids: torch.Tensor  # (S, max_stop) int64, -1 = unused
    kind: torch.Tensor  # (S,) int64 sampler code (batched_sampling.KIND_CODES)
    temperature: torch.Tensor  # (S,) fp32
    top_k: torch.Tensor  # (S,) int64
    top_p: torch.Tensor  # (S,) fp32
    mix_weight: torch.Tensor  # (S,) fp32
    seed: torch.Tensor  # (S,) int64
    packet: torch.Tensor  # (S, b + PACKET_EXTRA) int64: this step's output (tokens, count, done, n, was active)

    @classmethod
    def allocate(cls, slots: int, block_size: int, vocab: int, max_stop: int, device,
                 logits_dtype: torch.dtype = torch.float32) -> "SlotState":
        def z(*shape, dtype=torch.int64):
            return torch.zeros(*shape, dtype=dtype, device=device)

        d = max(block_size - 1, 0)
        return cls(active=z(slots, dtype=torch.bool), tidar=z(slots, dtype=torch.bool), cache_len=z(slots),
                   pending=z(slots), drafts=z(slots, d), num_drafts=z(slots),
                   draft_logits=z(slots, d, vocab, dtype=logits_dtype), generated=z(slots), max_new=z(slots),
                   stop_ids=torch.full((slots, max_stop), -1, dtype=torch.int64, device=device), kind=z(slots),
                   temperature=torch.ones(slots, device=device), top_k=z(slots),
                   top_p=torch.ones(slots, device=device), mix_weight=torch.ones(slots, device=device),
                   seed=z(slots), packet=z(slots, block_size + PACKET_EXTRA))

    def move_slot(self, source: int, target: int) -> None:
        """Slot `target` takes slot `source`'s row of every tensor (compaction; the source row is left as is)."""
        for f in fields(self):
            tensor = getattr(self, f.name)
            tensor[target].copy_(tensor[source])

    def prefix(self, slots: int) -> "SlotState":
        """Views of slots [0, slots): a graph bucket works on a prefix, in place."""
        return SlotState(**{f.name: getattr(self, f.name)[:slots] for f in fields(self)})
