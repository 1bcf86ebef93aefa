"""The cache commit of a step, every layer in one Triton launch (grid: layers x slots).

The forward writes its K/V rows and its [q|k | v_delayed] projections into stacked scratch buffers
(`slots.SlotCache.stash_buffers`: one flat region per layer, the pass's (slots, rows) rows contiguous), so
one kernel reads every layer's stash: K/V rows [0, rows) land at `length + r` (rows past the accepted
count land beyond the slot's length, where nothing reads them: R rows of slack, as the torch commit),
and each slot's CCA state becomes the last rf rows of [old state | accepted rows]. This replaces
`SlotCache.commit_torch` (~43 torch ops at 4 layers, +10 per layer) bit for bit
(tests/test_commit_kernel.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _copy_rows(src, dst, src_row, dst_row, row_mask, WIDTH: tl.constexpr, BLOCK_C: tl.constexpr):
    """dst[dst_row, :WIDTH] = src[src_row, :WIDTH] (row offsets in elements, rows masked)."""
    for c0 in tl.static_range(0, WIDTH, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = row_mask[:, None] & (c < WIDTH)[None, :]
        value = tl.load(src + src_row[:, None] + c[None, :], mask=mask)
        tl.store(dst + dst_row[:, None] + c[None, :], value.to(dst.dtype.element_ty), mask=mask)


@triton.jit
def _shift_state(state, src, state_at, src_at, count, SRC_STRIDE: tl.constexpr,
                 WIDTH: tl.constexpr, RF: tl.constexpr, BLOCK_RF: tl.constexpr, BLOCK_C: tl.constexpr):
    """state rows j <- row count + j of [state (RF rows) | src rows]: every source row is loaded before any
    row is stored (a barrier between), since the new state overlaps the old one."""
    j = tl.arange(0, BLOCK_RF)
    live = j < RF
    joined = count + j
    from_state = joined < RF
    for c0 in tl.static_range(0, WIDTH, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cm = (c < WIDTH)[None, :]
        old = tl.load(state + state_at + joined[:, None] * WIDTH + c[None, :], mask=(live & from_state)[:, None] & cm)
        new = tl.load(src + src_at + (joined - RF)[:, None] * SRC_STRIDE + c[None, :],
                      mask=(live & (joined >= RF))[:, None] & cm)
        value = tl.where(from_state[:, None], old, new.to(state.dtype.element_ty))
        tl.debug_barrier()
        tl.store(state + state_at + j[:, None] * WIDTH + c[None, :], value, mask=live[:, None] & cm)
        tl.debug_barrier()


@triton.jit
def commit_kernel(k_src, v_src, kv_src_layer, k_dst, v_dst, kv_dst_layer, kv_dst_slot,
                  proj_src, proj_src_layer, qk_state, qk_layer, qk_slot, delayed_state, delayed_layer, delayed_slot,
                  lengths_ptr, counts_ptr, T, rows, capacity,
                  KV: tl.constexpr, C: tl.constexpr, DV: tl.constexpr, W: tl.constexpr, RF: tl.constexpr,
                  BLOCK_ROWS: tl.constexpr, BLOCK_KV: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_RF: tl.constexpr):
    layer = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1).to(tl.int64)
    length = tl.load(lengths_ptr + s)
    for r0 in range(0, rows, BLOCK_ROWS):
        r = r0 + tl.arange(0, BLOCK_ROWS).to(tl.int64)
        at = tl.minimum(length + r, capacity - 1)
        src_row = layer * kv_src_layer + (s * T + r) * KV
        dst_row = layer * kv_dst_layer + s * kv_dst_slot + at * KV
        _copy_rows(k_src, k_dst, src_row, dst_row, r < rows, KV, BLOCK_KV)
        _copy_rows(v_src, v_dst, src_row, dst_row, r < rows, KV, BLOCK_KV)
    if RF > 0:
        count = tl.load(counts_ptr + s)
        src_at = layer * proj_src_layer + s * T * W
        _shift_state(qk_state, proj_src, layer * qk_layer + s * qk_slot, src_at, count, W, C, RF, BLOCK_RF, BLOCK_C)
        _shift_state(delayed_state, proj_src + C, layer * delayed_layer + s * delayed_slot, src_at, count, W, DV, RF,
                     BLOCK_RF, BLOCK_C)


def launch_commit(kv_scratch: torch.Tensor, proj_scratch: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor,
                  state_qk: torch.Tensor, state_delayed: torch.Tensor, lengths: torch.Tensor, counts: torch.Tensor,
                  batch: int, pass_rows: int, rows: int) -> None:
    """Commit a pass of `batch` slots x `pass_rows` rows, stashed in kv_scratch (2, L, flat) and proj_scratch
    (L, flat), into k, v (L, S, capacity, Hkv, D) and the states (L, S, rf, width), S = batch."""
    L, S, capacity = k.shape[0], k.shape[1], k.shape[2]
    KV = k.shape[3] * k.shape[4]
    rf = state_qk.shape[2]
    C, DV = state_qk.shape[3], state_delayed.shape[3]
    W = C + 2 * DV
    assert S == batch and k.stride(3) == k.shape[4] and k.stride(2) == KV and v.stride() == k.stride()
    if rf:
        assert state_qk.stride(2) == C and state_delayed.stride(2) == DV and proj_scratch is not None
    proj = proj_scratch if rf else kv_scratch[0]  # no CCA state: the kernel never reads it
    commit_kernel[(L, S)](
        kv_scratch[0], kv_scratch[1], kv_scratch.stride(1), k, v, k.stride(0), k.stride(1),
        proj, proj.stride(0), state_qk, state_qk.stride(0), state_qk.stride(1), state_delayed,
        state_delayed.stride(0), state_delayed.stride(1), lengths, counts, pass_rows, rows, capacity,
        KV=KV, C=C, DV=DV, W=W, RF=rf, BLOCK_ROWS=16, BLOCK_KV=min(triton.next_power_of_2(KV), 256),
        BLOCK_C=min(triton.next_power_of_2(max(C, DV, 1)), 256), BLOCK_RF=triton.next_power_of_2(max(rf, 1)))


def aot_kernels(kv: int = 256, channels: int = 1280, delayed: int = 128, receptive_field: int = 3) -> list:
    """(kernel, signature, constexprs) of the commit kernel at ZAYA1-8B's widths (2 x 128 K/V, (8 + 2) x 128
    [q|k] channels, 128 delayed-value channels) in bf16, for ahead-of-time compilation checks."""
    from ..codegen.aot import aot_signature

    scalars = dict(kv_src_layer="i64", kv_dst_layer="i64", kv_dst_slot="i64", proj_src_layer="i64", qk_layer="i64",
                   qk_slot="i64", delayed_layer="i64", delayed_slot="i64", lengths_ptr="*i64", counts_ptr="*i64",
                   T="i32", rows="i32", capacity="i64")
    constexprs = dict(KV=kv, C=channels, DV=delayed, W=channels + 2 * delayed, RF=receptive_field, BLOCK_ROWS=16,
                      BLOCK_KV=min(triton.next_power_of_2(kv), 256), BLOCK_C=256,
                      BLOCK_RF=triton.next_power_of_2(receptive_field))
    return [(commit_kernel, aot_signature(commit_kernel, "*bf16", **scalars), constexprs)]
