"""Bytes one decode step moves outside the model's forward, counted analytically from what the step runs
(`decode_step`), for `benchmarks/decode_bench.py` to report next to the forward's (`CostModel.forward`).

Steady-state TiDAR step with P proposal blocks (b verify rows, the chosen block's b - 1 draft rows) or an AR
step (P = 0: one verify row, no drafts), B slots, vocabulary V, the model dtype of `dtype_bytes` throughout
(no fp32 copy of any logits row):
- logits: the LM head's output rows written once, the verify rows' (`_logits`) and the chosen block's
  (`sample_next_drafts` writes them straight into SlotState.draft_logits);
- draft rows: the chosen block's b - 1 hidden rows gathered (read and written) for that head matmul;
- verifier: the three split-vocabulary kernels read the target and draft rows twice (statistics, then the
  walk and the Gumbel-max draw); their partials are O(B * splits), not counted;
- draft sampling: the split-vocabulary Gumbel-max race reads the b - 1 draft rows once;
- commit: every layer's stashed K/V rows read and written at the cache length, the CCA state's rf rows of
  [q|k | v_delayed] read and written (one kernel, `commit_kernel`);
- layout and bookkeeping: the int64 ids, positions, predecessors and packet (`step_kernels`).
The LM head's weights are the forward's (the cost model counts them in its `lm_head` part).
- filter (only with `filtered`: some slot uses top-k / top-p): `filter_kernel` reads each verify and draft row
  (the verifier's targets, its drafts, the next drafts) FILTER_PASSES times in the model dtype and writes it once
  in fp32, and the verifier and draft sampler then read fp32 rather than the model dtype. An upper bound: both
  filters on, every bracket at its widest.
"""

from __future__ import annotations

from ..spec import ModelSpec

INT64 = 8
FP32 = 4
# the filter's passes over a row with top-k and top-p both on: the maximum, 8 for each threshold (32-bit keys, a
# bracket shrinking 17x per pass: ceil(32 / log2(17))), the top-p normaliser and the write
FILTER_PASSES = 1 + 8 + 1 + 8 + 1


def step_bytes_outside_forward(model: ModelSpec, block_size: int, batch: int, proposals: int,
                               dtype_bytes: int = 2, filtered: bool = False) -> dict[str, float]:
    """{part: bytes} of one step outside the forward (see the module docstring for what each part counts)."""
    B, V, H, a = batch, model.vocab_size, model.hidden_size, model.attention
    verify = block_size if proposals else 1
    drafts = block_size - 1 if proposals else 0
    rows = verify + proposals * block_size
    rf = a.cca.receptive_field if a.kind == "ccgqa" else 0
    kv = a.num_kv_heads * a.head_dim
    state_width = (a.num_heads + a.num_kv_heads) * a.head_dim + kv // 2 if rf else 0
    parts = {
        "logits": B * (verify + drafts) * V * dtype_bytes,
        "draft_rows": B * drafts * H * 2 * dtype_bytes,
        "verifier": 2 * B * (verify + drafts) * V * dtype_bytes,
        "draft_sampling": B * drafts * V * dtype_bytes,
        "commit": model.num_layers * B * (2 * 2 * verify * kv + 2 * rf * state_width) * dtype_bytes,
        "layout_bookkeeping": B * INT64 * (3 * rows + rf + 2 * (block_size + 4) + 16),
    }
    if filtered:
        filtered_rows = B * (verify + 2 * drafts)
        parts["filter"] = filtered_rows * V * (FILTER_PASSES * dtype_bytes + FP32) + (
            2 * B * (verify + drafts) + B * drafts) * V * (FP32 - dtype_bytes)
    return parts
