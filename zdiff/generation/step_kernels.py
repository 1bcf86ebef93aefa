"""The step's layout and bookkeeping in one Triton kernel each (grid: one program per slot).

`layout_kernel` is `step_torch.layout_rows` (53 + 21 torch ops before: `_layout_rows` and
`extended_predecessors`), `settle_kernel` is `step_torch.settle` (the tokens / stop / limit / packet /
state update, ~30 ops before), bit for bit: tests/test_step_kernels.py compares them on random slot
states. The torch versions stay the CPU path; `layout` and `settle` pick one.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import step_torch
from .slot_state import PACKET_EXTRA, SlotState

LAST_CACHED = tl.constexpr(step_torch.LAST_CACHED)
NO_PREDECESSOR = tl.constexpr(step_torch.NO_PREDECESSOR)


@triton.jit
def layout_kernel(active_ptr, tidar_ptr, num_drafts_ptr, cache_len_ptr, pending_ptr, drafts_ptr, levels_ptr,
                  ids_ptr, positions_ptr, preds_ptr, lengths_ptr, causal_ptr, rows_ptr, blocks_ptr, verify_drafts_ptr,
                  first_position_ptr, D, fill_id,
                  R: tl.constexpr, VERIFY_ROWS: tl.constexpr, P: tl.constexpr, LAST_LEVEL: tl.constexpr,
                  B: tl.constexpr, RF: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_RF: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    active = tl.load(active_ptr + s) != 0
    cl = tl.load(cache_len_ptr + s)
    m = cl * 0  # int64 zero
    if VERIFY_ROWS > 1:
        m = tl.where(active, tl.minimum(tl.load(num_drafts_ptr + s), VERIFY_ROWS - 1), m)  # drafts past d dropped
    blocks = m * 0
    for p in tl.static_range(P):
        blocks += (tl.load(levels_ptr + p) <= m).to(tl.int64)
    blocks = tl.where((tl.load(tidar_ptr + s) != 0) & active, blocks, 0)
    causal = tl.where(active, 1 + m, 0)
    n_rows = causal + blocks * B
    tl.store(lengths_ptr + s, tl.where(active, cl, 0).to(tl.int32))
    tl.store(causal_ptr + s, causal.to(tl.int32))
    tl.store(rows_ptr + s, n_rows.to(tl.int32))
    tl.store(blocks_ptr + s, blocks)
    tl.store(verify_drafts_ptr + s, m)  # the drafts this step verifies (0 for idle slots)
    tl.store(first_position_ptr + s, cl + 1)  # the position of d_1 (keys the verifier's draws)

    r = tl.arange(0, BLOCK_R).to(tl.int64)
    live = r < R
    offset = tl.maximum(r - causal, 0)
    in_block = (r >= causal) & (r < n_rows)
    j = tl.minimum(offset // B, LAST_LEVEL)
    t = offset % B
    level = r * 0
    for p in tl.static_range(P):
        level = tl.where(j == p, tl.load(levels_ptr + p), level)
    draft = tl.load(drafts_ptr + s * D + tl.minimum(tl.maximum(r - 1, 0), D - 1), mask=live & (r * 0 + D > 0),
                    other=fill_id)
    ids = tl.where(r == 0, tl.load(pending_ptr + s), tl.where(r < causal, draft, fill_id))
    positions = tl.where(in_block, cl + 1 + level + t, cl + tl.minimum(r, VERIFY_ROWS - 1))
    new_pred = tl.where(r == 0, LAST_CACHED, r - 1)
    new_pred = tl.where(in_block & (t == 0), level, new_pred)
    new_pred = tl.where(r < n_rows, new_pred, NO_PREDECESSOR)
    last = r * 0 - 1
    if RF > 0:
        last = tl.where(cl >= 1, RF - 1, last)
    pred = tl.where(new_pred >= 0, RF + new_pred, tl.where(new_pred == LAST_CACHED, last, -1))
    tl.store(ids_ptr + s * R + r, ids, mask=live)
    tl.store(positions_ptr + s * R + r, positions, mask=live)
    tl.store(preds_ptr + s * (RF + R) + RF + r, pred, mask=live)
    if RF > 0:
        js = tl.arange(0, BLOCK_RF).to(tl.int64)
        state = tl.where((js > 0) & (cl - RF + js - 1 >= 0), js - 1, -1)
        tl.store(preds_ptr + s * (RF + R) + js, state, mask=js < RF)


@triton.jit
def settle_kernel(active_ptr, n_ptr, token_ptr, drafts_ptr, stop_ptr, max_new_ptr, generated_ptr, pending_ptr,
                  cache_len_ptr, packet_ptr, n_out_ptr, counts_ptr, was_active_ptr, old_len_ptr, next_position_ptr,
                  D, NSTOP, B: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_STOP: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    active = tl.load(active_ptr + s) != 0
    n = tl.where(active, tl.load(n_ptr + s), 0)
    counts = tl.where(active, n + 1, 0)
    token = tl.load(token_ptr + s)
    i = tl.arange(0, BLOCK_B).to(tl.int64)
    live = i < B
    draft = tl.load(drafts_ptr + s * D + i, mask=live & (i < D) & (i * 0 + D > 0), other=0)
    tokens = tl.where((i < n) & (i < D), draft, token)
    js = tl.arange(0, BLOCK_STOP)
    stops = tl.load(stop_ptr + s * NSTOP + js, mask=js < NSTOP, other=0)
    match = (tokens[:, None] == stops[None, :]) & (js < NSTOP)[None, :]
    hit = (tl.max(match.to(tl.int32), axis=1) > 0) & (i < counts) & live
    first_stop = tl.min(tl.where(hit, i, B), axis=0)
    max_new, generated = tl.load(max_new_ptr + s), tl.load(generated_ptr + s)
    delivered = tl.maximum(tl.minimum(tl.minimum(counts, first_stop + 1), max_new - generated), 0)
    delivered = tl.where(active, delivered, 0)
    done = active & ((first_stop < counts) | (generated + delivered >= max_new))
    row = packet_ptr + s * (B + 4)
    tl.store(row + i, tl.where(i < delivered, tokens, -1), mask=live)
    tl.store(row + B, delivered)
    tl.store(row + B + 1, done.to(tl.int64))
    tl.store(row + B + 2, n.to(tl.int64))
    tl.store(row + B + 3, active.to(tl.int64))
    tl.store(pending_ptr + s, token, mask=active)
    tl.store(generated_ptr + s, generated + delivered)
    tl.store(active_ptr + s, active & (done == 0))
    tl.store(n_out_ptr + s, n)
    tl.store(counts_ptr + s, counts)
    tl.store(was_active_ptr + s, active)
    cl = tl.load(cache_len_ptr + s)  # the commit writes at the old length; the lengths advance here
    tl.store(old_len_ptr + s, cl)
    tl.store(cache_len_ptr + s, cl + counts)
    tl.store(next_position_ptr + s, cl + counts + 1)


def layout_rows_triton(st: SlotState, rows: int, verify_rows: int, levels: torch.Tensor, block_size: int,
                       fill_id: int, receptive_field: int):
    S, dev, rf = st.active.shape[0], st.active.device, receptive_field
    ids = torch.empty(S, rows, dtype=torch.long, device=dev)
    positions = torch.empty_like(ids)
    preds = torch.empty(S, rf + rows, dtype=torch.long, device=dev)
    lengths, causal, n_rows = (torch.empty(S, dtype=torch.int32, device=dev) for _ in range(3))
    blocks, verify_drafts, first_position = (torch.empty(S, dtype=torch.long, device=dev) for _ in range(3))
    layout_kernel[(S,)](st.active, st.tidar, st.num_drafts, st.cache_len, st.pending, st.drafts, levels, ids,
                        positions, preds, lengths, causal, n_rows, blocks, verify_drafts, first_position,
                        st.drafts.shape[1], fill_id, R=rows,
                        VERIFY_ROWS=verify_rows, P=levels.shape[0],
                        LAST_LEVEL=max(levels.shape[0] - 1, 0), B=block_size, RF=rf,
                        BLOCK_R=triton.next_power_of_2(rows), BLOCK_RF=triton.next_power_of_2(max(rf, 1)))
    return ids, positions, preds, lengths, causal, n_rows, blocks, verify_drafts, first_position


def settle_triton(st: SlotState, n: torch.Tensor, token: torch.Tensor):
    S, b = st.active.shape[0], st.packet.shape[1] - PACKET_EXTRA
    n_out, counts, was_active = torch.empty_like(n), torch.empty_like(n), torch.empty_like(st.active)
    old_len, next_position = torch.empty_like(st.cache_len), torch.empty_like(st.cache_len)
    settle_kernel[(S,)](st.active, n, token, st.drafts, st.stop_ids, st.max_new, st.generated, st.pending,
                        st.cache_len, st.packet, n_out, counts, was_active, old_len, next_position,
                        st.drafts.shape[1], st.stop_ids.shape[1], B=b, BLOCK_B=triton.next_power_of_2(b),
                        BLOCK_STOP=triton.next_power_of_2(st.stop_ids.shape[1]))
    return n_out, counts, was_active, old_len, next_position


def layout(kernels: bool, *args):
    """`step_torch.layout_rows` in one Triton launch where `kernels`, else as torch ops (same arguments)."""
    return (layout_rows_triton if kernels else step_torch.layout_rows)(*args)


def settle(kernels: bool, st: SlotState, n: torch.Tensor, token: torch.Tensor):
    """`step_torch.settle` in one Triton launch where `kernels`, else as torch ops."""
    return (settle_triton if kernels else step_torch.settle)(st, n, token)


def aot_kernels(block_size: int = 16, proposals: int = 3, receptive_field: int = 3, max_stop: int = 16) -> list:
    """(kernel, signature, constexprs) of the layout and bookkeeping kernels at ZAYA1-8B-like step shapes, for
    ahead-of-time compilation checks (tests/test_step_kernels.py)."""
    from ..codegen.aot import aot_signature

    rows = block_size * (1 + proposals)
    i64, i32 = "*i64", "*i32"
    layout_types = dict(active_ptr="*i1", tidar_ptr="*i1", lengths_ptr=i32, causal_ptr=i32, rows_ptr=i32,
                        D="i32", fill_id="i32")
    settle_types = dict(active_ptr="*i1", was_active_ptr="*i1", D="i32", NSTOP="i32")
    return [
        (layout_kernel, aot_signature(layout_kernel, i64, **layout_types),
         dict(R=rows, VERIFY_ROWS=block_size, P=proposals, LAST_LEVEL=proposals - 1, B=block_size,
              RF=receptive_field, BLOCK_R=triton.next_power_of_2(rows),
              BLOCK_RF=triton.next_power_of_2(receptive_field))),
        (settle_kernel, aot_signature(settle_kernel, i64, **settle_types),
         dict(B=block_size, BLOCK_B=triton.next_power_of_2(block_size), BLOCK_STOP=triton.next_power_of_2(max_stop))),
    ]
