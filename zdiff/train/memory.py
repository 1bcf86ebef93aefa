"""Expected peak memory of one training step per device: the formula `zdiff train` checks first.

Everything is integer arithmetic on the spec and the flags, so a run asking for --seq-len 10**9
is refused in microseconds, before a pattern, a batch or a model exists. With P parameters,
W data-parallel ranks, b sequences per rank, R rows per sequence (S for AR, 2S for TiDAR), L
layers, a bytes per compute element (2 in bf16, 4 in fp32):

  weights      4P fp32 master weights          (FSDP2: 4P/W, plus the unsharded root and two layers)
  gradients    4P fp32                         (FSDP2: 4P/W, plus the same unsharded part; DDP: +4P buckets)
  optimizer    8P AdamW moments                (FSDP2: 8P/W)
  casts        2P autocast copies of the weights in bf16 (FSDP2: of the unsharded part only)
  activations  b R L A      A = bytes a layer keeps per row for its backward (see `saved_bytes_per_row`)
               with --activation-checkpointing: b R (L A_in + A): each layer's inputs, one layer recomputed
  loss         one chunk of fp32 logits and its compute-dtype gradient (zdiff.train.linear_ce), the LM
               head in the compute dtype, the final hidden states and their gradient
  torch backend only: the dense visibility mask (b R^2 bytes) and, per layer, what SDPA with that
               mask saves for backward: on a CPU (math path) the probabilities, b heads R^2 fp32; on a
               GPU the mask as an additive bias, b R^2 a. Quadratic in S either way.

A is an estimate from the saved tensors of the generated model (residual streams in fp32, the
projections, CCA inputs and outputs, attention output and log-sum-exp, router MLP, the
dispatched expert rows); BENCHMARKS.md compares it with the measured peak where a device ran.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import ZdiffError
from ..spec import ModelSpec
from ..spec.counts import count_model
from .linear_ce import chunk_rows
from .linear_distill import CHUNK_ARRAYS

GB = 1e9


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    casts: int
    activations: int
    loss: int
    dense_attention: int  # torch backend: mask + saved attention probabilities

    @property
    def total(self) -> int:
        return (self.weights + self.gradients + self.optimizer + self.casts + self.activations + self.loss
                + self.dense_attention)

    def describe(self) -> str:
        parts = [(name, getattr(self, name)) for name in
                 ("weights", "gradients", "optimizer", "casts", "activations", "loss", "dense_attention")]
        return ", ".join(f"{name.replace('_', ' ')} {value / GB:.3g} GB" for name, value in parts if value)


def saved_bytes_per_row(spec: ModelSpec, compute_bytes: int) -> tuple[int, int]:
    """(A, A_in): bytes one layer keeps for backward per row, and the bytes of its inputs alone."""
    H, a, moe, attn = spec.hidden_size, compute_bytes, spec.moe, spec.attention
    D, nh, nkv = attn.head_dim, attn.num_heads, attn.num_kv_heads
    qkv = (nh + 2 * nkv) * D
    router_hidden = 0 if moe is None else moe.router.hidden_size or 0
    attention = a * (3 * H + 2 * qkv + (nh + nkv) * D + nh * D) + 4 * nh  # norms, projections, CCA, output, lse
    residual = 2 * 4 * H  # the fp32 residual stream after each sublayer
    router = 0 if moe is None else a * 6 * router_hidden + 8 * moe.router_classes
    # dispatched rows (the dense MLP reads the norm output in place), gate_up, SwiGLU, down
    experts = a * 3 * spec.ffn_size if moe is None else moe.top_k * a * (2 * H + 3 * moe.ffn_size)
    inputs = 4 * H + a * H + a * router_hidden  # residual stream, its norm, router state
    return attention + residual + router + experts, inputs


def estimate_training_memory(spec: ModelSpec, seq_len: int, batch_per_rank: int, mode: str = "tidar",
                             compute: str = "fp32", backend: str = "triton", world: int = 1, fsdp: bool = False,
                             activation_checkpointing: bool = False, device_type: str = "cuda",
                             distill: bool = False) -> MemoryEstimate:
    counts = count_model(spec, dtype_bytes=4)
    P, L, H, V = counts.total_params, spec.num_layers, spec.hidden_size, spec.vocab_size
    a = 2 if compute == "bf16" else 4
    rows = batch_per_rank * (2 * seq_len if mode == "tidar" else seq_len)

    if fsdp and world > 1:
        layer = (P - counts.embedding_params - counts.lm_head_params) // L
        unsharded = counts.embedding_params + counts.lm_head_params + 2 * layer  # root + current and prefetched layer
        resident = P // world + unsharded
        weights, gradients, optimizer = 4 * resident, 4 * resident, 8 * (P // world)
        casts = 2 * unsharded if a == 2 else 0
    else:
        weights, gradients, optimizer = 4 * P, 4 * P * (2 if world > 1 else 1), 8 * P
        casts = 2 * P if a == 2 else 0

    per_row, inputs = saved_bytes_per_row(spec, a)
    kept = L * inputs + per_row if activation_checkpointing else L * per_row
    activations = rows * (kept + 4 * H)  # + the embedding output
    workspace = min(rows, chunk_rows(V)) * V * (4 + a)  # the chunked CE's logits chunk
    loss = (a * V * H if a != 4 else 0) + rows * H * (a + 4)
    if distill and mode == "tidar":
        # self-distillation (linear_distill): the mask rows 1..S-1 and their teacher rows kept for backward, and
        # a chunk of CHUNK_ARRAYS fp32 (rows, V) arrays, alive after the CE's chunk is freed (the larger counts)
        pairs = batch_per_rank * (seq_len - 1)
        distill_chunk = min(pairs, max(1, chunk_rows(V) // CHUNK_ARRAYS)) * V * 4 * CHUNK_ARRAYS
        workspace = max(workspace, distill_chunk)
        loss += 2 * pairs * H * a
    loss += workspace

    dense = 0
    if backend == "torch":
        per_sequence_rows = rows // batch_per_rank
        squares = batch_per_rank * per_sequence_rows ** 2
        layers_saved = 1 if activation_checkpointing else L
        saved_per_square = spec.attention.num_heads * 4 if device_type == "cpu" else a
        dense = squares + layers_saved * squares * saved_per_square
    return MemoryEstimate(weights, gradients, optimizer, casts, activations, loss, dense)


def device_capacity(device: torch.device) -> tuple[int, str]:
    """(bytes, description) of the memory a training step on `device` can use."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.total_memory, props.name
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "host memory"


def check_fits(estimate: MemoryEstimate, capacity: int, where: str, asked: str) -> None:
    """Refuse a run whose expected peak exceeds the device, naming the numbers."""
    if estimate.total > capacity:
        raise ZdiffError(
            f"{asked}: expected peak memory {estimate.total / GB:.3g} GB per device ({estimate.describe()}) "
            f"exceeds the {capacity / GB:.3g} GB of {where}; lower --seq-len or --batch-size, add "
            f"--activation-checkpointing, or shard with --fsdp over more ranks")

