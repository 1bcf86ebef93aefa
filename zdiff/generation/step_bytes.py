"""Bytes one decode step moves outside the model's forward, counted analytically from what the step runs
(`decode_step`), for `benchmarks/decode_bench.py` to report next to the forward's (`CostModel.forward`).

Steady-state TiDAR step with P proposal blocks (b verify rows, the chosen block's b - 1 draft rows) or an AR
step (P = 0: one verify row, no drafts), B slots, vocabulary V, model dtype of `dtype_bytes`, fp32 logits:
- logits: the LM head's output rows written in the model dtype, read back and written as fp32 (`_logits`);
- verifier: the fused kernels read the target and draft rows (fp32) twice (statistics, then the walk/draw);
- draft sampling: temperature (read, write), the banned-id fill (an out-of-place copy), softmax, the fp64 cast
  and cumsum of the inverse-CDF draw, the argmax: 56 bytes per element of the b - 1 draft rows;
- draft logits: the copy into SlotState.draft_logits (fp32, read and write);
- commit: every layer's stashed K/V rows read and written at the cache length, the CCA state's rf rows of
  [q|k | v_delayed] read and written (one kernel, `commit_kernel`);
- layout and bookkeeping: the int64 ids, positions, predecessors and packet (`step_kernels`).
The LM head's weights are the forward's (the cost model counts them in its `lm_head` part). Top-k / top-p
(the sort) is not counted: the numbers are for unfiltered samplers.
"""

from __future__ import annotations

from ..spec import ModelSpec

FP32, INT64 = 4, 8
DRAFT_SAMPLING_BYTES_PER_ELEMENT = (4 + 4) + (4 + 4) + (4 + 4) + (4 + 8) + (8 + 8) + 4


def step_bytes_outside_forward(model: ModelSpec, block_size: int, batch: int, proposals: int,
                               dtype_bytes: int = 2) -> dict[str, float]:
    """{part: bytes} of one step outside the forward (see the module docstring for what each part counts)."""
    B, V, a = batch, model.vocab_size, model.attention
    verify = block_size if proposals else 1
    drafts = block_size - 1 if proposals else 0
    rows = verify + proposals * block_size
    cast = dtype_bytes + dtype_bytes + FP32 if dtype_bytes != FP32 else dtype_bytes
    rf = a.cca.receptive_field if a.kind == "ccgqa" else 0
    kv = a.num_kv_heads * a.head_dim
    state_width = (a.num_heads + a.num_kv_heads) * a.head_dim + kv // 2 if rf else 0
    return {
        "logits": B * (verify + drafts) * V * cast,
        "verifier": 2 * B * (verify + drafts) * V * FP32,
        "draft_sampling": B * drafts * V * DRAFT_SAMPLING_BYTES_PER_ELEMENT,
        "draft_logits": B * drafts * V * 2 * FP32,
        "commit": model.num_layers * B * (2 * 2 * verify * kv + 2 * rf * state_width) * dtype_bytes,
        "layout_bookkeeping": B * INT64 * (3 * rows + rf + 2 * (block_size + 4) + 16),
    }
