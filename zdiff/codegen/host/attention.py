"""Host side of the TiDAR attention kernels (template attention.py.jinja): launchers, autograd, AOT, bench hooks.

One rendered module per layout (training, prefill, decode). Its constants say what the host launches:
HAS_CACHE (decode: a KV cache, split over programs when the grid would leave compute units idle, then merged
by `_combine`) and BACKWARD (training: dQ and dK/dV kernels). Autotune buckets are keys per sequence.
"""

from __future__ import annotations

import functools

import torch
import triton

from ..aot import aot_entry
from ..families.attention import bench_shape
from ..launch import launch_kwargs
from . import ModuleHost

LOG2E = 1.4426950408889634
_LAYOUT_TYPES = {"CAUSAL_ROWS": "*i32", "ROWS": "*i32", "T": "i32"}
_FWD_TYPES = {"LSE": "*fp32", "O_PART": "*fp32", "LSE_PART": "*fp32", "CACHE_LENS": "*i32", "cache_slots": "i32",
              "num_splits": "i32", "qk_scale": "fp32", **_LAYOUT_TYPES}
_BWD_TYPES = {"LSE": "*fp32", "DELTA": "*fp32", "qk_scale": "fp32", "sm_scale": "fp32", **_LAYOUT_TYPES}


def _layout_scalars(q, cache_lengths, causal_rows, rows):
    B, device = q.shape[0], q.device

    def as_int32(x):
        return x.to(device=device, dtype=torch.int32).contiguous()
    if cache_lengths is None:
        cache_lengths = torch.zeros(B, dtype=torch.int32)
    return as_int32(cache_lengths), as_int32(causal_rows), as_int32(rows)


@functools.lru_cache(maxsize=None)
def _compute_units(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _splits(programs: int, max_cache: int, block_n: int, device) -> int:
    """Split the cache keys when the grid would leave compute units idle (small-batch decode)."""
    if max_cache <= 4 * block_n or device.type != "cuda":
        return 1
    units = _compute_units(device.index if device.index is not None else torch.cuda.current_device())
    return max(1, min(triton.cdiv(2 * units, programs), max_cache // (4 * block_n), 64))


def _softmax_delta(do, out, hkv, group):
    """rowsum(dO * O) per packed row (B, HKV, T * GROUP), the softmax-backward correction; contiguous
    (the reshape after the permute copies)."""
    B, T = out.shape[:2]
    return (do.float() * out.float()).sum(-1).view(B, T, hkv, group).permute(0, 2, 1, 3).reshape(B, hkv, T * group)


class AttentionHost(ModuleHost):
    """The launchers of one layout's attention module (constants LAYOUT, GROUP, HKV, HEAD_DIM, BLOCK_D, BLOCK,
    LEVELS, HAS_CACHE, BACKWARD)."""

    def __init__(self, module):
        super().__init__(module)
        m = module
        self.layout, self.group, self.hkv, self.head_dim = m.LAYOUT, m.GROUP, m.HKV, m.HEAD_DIM
        self.block_d, self.block, self.levels = m.BLOCK_D, m.BLOCK, m.LEVELS
        self.has_cache, self.backward_kernels = m.HAS_CACHE, m.BACKWARD
        self.fwd, self.combine = self.kernel("fwd"), self.kernel("combine")
        self.fwd_entry, self.dq_entry, self.dkdv_entry = (f"{self.name}_{s}" for s in ("fwd", "bwd_dq", "bwd_dkdv"))
        self.bench = {self.fwd_entry: self._bench_fwd}
        if self.backward_kernels:
            self.bwd_dq, self.bwd_dkdv = self.kernel("bwd_dq"), self.kernel("bwd_dkdv")
            self.bench.update({self.dq_entry: self._bench_bwd_dq, self.dkdv_entry: self._bench_bwd_dkdv})
        if self.has_cache:
            self.bench_skipped = {
                f"{self.name}_fwd_split": "the split decode launch takes the _fwd config (its hook times splits)",
                f"{self.name}_combine": "it merges a split launch's partials; its config is not tuned",
            }

    def _constexprs(self, hkv):
        return dict(HKV=hkv, GROUP=self.group, HEAD_DIM=self.head_dim, BLOCK_D=self.block_d)

    def forward(self, q, k, v, cache_lengths, causal_rows, rows, scale, k_cache=None, v_cache=None,
                store_lse=False, splits=None, config=None):
        """(out, lse): q (B, T, Hq, D), k/v (B, T, Hkv, D), optional cache (B, slots, Hkv, D). `config` replaces
        the forward's table / default config (autotune's benchmark hook); `splits` the number of cache splits."""
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        B, T, Hq, D = q.shape
        hkv = k.shape[2]
        assert Hq == hkv * self.group and D == self.head_dim, \
            f"{self.name} was generated for {self.group} query heads per KV head of dim {self.head_dim}"
        cache_lengths, causal_rows, rows = _layout_scalars(q, cache_lengths, causal_rows, rows)
        has_cache = k_cache is not None
        if has_cache:
            k_cache, v_cache = k_cache.contiguous(), v_cache.contiguous()  # no copy for a DecodeCache's buffers
        else:
            k_cache, v_cache = k, v  # unused
        max_cache = k_cache.shape[1] if has_cache else 0  # the capacity: reading the lengths would sync the host
        cfg = self.config(self.fwd_entry, max_cache + T, config)
        grid_m = triton.cdiv(T * self.group, cfg["BLOCK_M"])
        num_splits = splits or (_splits(grid_m * B * hkv, max_cache, cfg["BLOCK_N"], q.device) if has_cache else 1)
        out = torch.empty_like(q)
        lse = torch.empty(B, hkv, T * self.group, dtype=torch.float32, device=q.device) if store_lse else out
        if num_splits > 1:
            o_part = torch.empty(num_splits, B * hkv, T * self.group, self.block_d, dtype=torch.float32,
                                 device=q.device)
            lse_part = torch.empty(num_splits, B * hkv, T * self.group, dtype=torch.float32, device=q.device)
        else:
            o_part = lse_part = out  # unused
        self.fwd[(grid_m, B * hkv, num_splits)](
            q, k, v, k_cache, v_cache, out, lse, o_part, lse_part, cache_lengths, causal_rows, rows, T,
            k_cache.shape[1], num_splits, scale * LOG2E, **self._constexprs(hkv), BLOCK=self.block,
            HAS_CACHE=has_cache, SPLIT=num_splits > 1, STORE_LSE=store_lse, **launch_kwargs(cfg))
        if num_splits > 1:
            combine = self.module.CONFIGS[f"{self.name}_combine"]
            self.combine[(triton.cdiv(T * self.group, combine["BLOCK_M"]), B * hkv)](
                o_part, lse_part, out, T, num_splits, **self._constexprs(hkv), **launch_kwargs(combine))
        return out, (lse if store_lse else None)

    def backward(self, do, q, k, v, out, lse, causal_rows, rows, scale):
        """(dq, dk, dv) of the training layout (no cache); q, k, v, out as the forward made them (contiguous)."""
        do = do.contiguous()
        _, causal_rows, rows = _layout_scalars(q, None, causal_rows, rows)
        delta = _softmax_delta(do, out, k.shape[2], self.group)
        return (self.backward_dq(do, q, k, v, lse, delta, causal_rows, rows, scale),
                *self.backward_dkdv(do, q, k, v, lse, delta, causal_rows, rows, scale))

    def backward_dq(self, do, q, k, v, lse, delta, causal_rows, rows, scale, config=None):
        """dq from the saved LSE and delta = rowsum(dO * O) (`_softmax_delta`); int32 layout scalars."""
        B, T = q.shape[:2]
        hkv = k.shape[2]
        dq = torch.empty_like(q)
        cfg = self.config(self.dq_entry, T, config)
        self.bwd_dq[(triton.cdiv(T * self.group, cfg["BLOCK_M"]), B * hkv)](
            q, k, v, do, dq, lse, delta, causal_rows, rows, T, scale * LOG2E, scale, **self._constexprs(hkv),
            BLOCK=self.block, **launch_kwargs(cfg))
        return dq

    def backward_dkdv(self, do, q, k, v, lse, delta, causal_rows, rows, scale, config=None):
        """(dk, dv), one program per key tile, summed over the GROUP query heads of each KV head."""
        B, T = q.shape[:2]
        hkv = k.shape[2]
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        cfg = self.config(self.dkdv_entry, T, config)
        self.bwd_dkdv[(triton.cdiv(T, cfg["BLOCK_N"]), B * hkv)](
            q, k, v, do, dk, dv, lse, delta, causal_rows, rows, T, scale * LOG2E, scale, **self._constexprs(hkv),
            BLOCK=self.block, **launch_kwargs(cfg))
        return dk, dv

    def apply(self, q, k, v, cache_lengths, causal_rows, rows, scale, k_cache=None, v_cache=None):
        """Attention of the module's layout with autograd (training layout only): q (B, T, GROUP * Hkv, D),
        k/v (B, T, Hkv, D); cache_lengths (B,) keys already cached (decode; None otherwise), causal_rows (B,)
        and rows (B,) as in the template's glossary."""
        return _AttentionFunction.apply(self, q, k, v, cache_lengths, causal_rows, rows, scale, k_cache, v_cache)

    @functools.cached_property
    def aot(self) -> dict:
        fixed = {**self._constexprs(self.hkv), "BLOCK": self.block}
        entries = {self.fwd_entry: aot_entry(self.fwd, self.pointer, {**fixed, "HAS_CACHE": self.has_cache,
                                                                      "SPLIT": False,
                                                                      "STORE_LSE": self.backward_kernels},
                                             **_FWD_TYPES)}
        if self.has_cache:
            entries[f"{self.name}_fwd_split"] = aot_entry(
                self.fwd, self.pointer, {**fixed, "HAS_CACHE": True, "SPLIT": True, "STORE_LSE": False}, **_FWD_TYPES)
            entries[f"{self.name}_combine"] = aot_entry(self.combine, self.pointer, self._constexprs(self.hkv),
                                                        O_PART="*fp32", LSE_PART="*fp32", T="i32", num_splits="i32")
        if self.backward_kernels:
            entries[self.dq_entry] = aot_entry(self.bwd_dq, self.pointer, fixed, **_BWD_TYPES)
            entries[self.dkdv_entry] = aot_entry(self.bwd_dkdv, self.pointer, fixed, **_BWD_TYPES)
        return entries

    # benchmark hooks: one pass of the module's layout at `bucket` keys per sequence (`bench_shape`; `batch`
    # overrides its number of sequences). The forward hook is the host launcher itself, so on a GPU a decode
    # pass splits the cache and runs the combine as it does in the model; backward hooks reuse one forward's LSE.

    def _bench_inputs(self, bucket, device, batch):
        s = bench_shape(self.layout, self.block, self.levels, bucket, batch)
        B, T, hkv = s["batch"], s["rows"], self.hkv
        q = torch.randn(B, T, hkv * self.group, self.head_dim, dtype=self.dtype, device=device)
        k, v = (torch.randn(B, T, hkv, self.head_dim, dtype=self.dtype, device=device) for _ in range(2))
        scalars = [torch.full((B,), s[key], dtype=torch.int32, device=device) for key in ("cache", "causal_rows")]
        rows = torch.full((B,), T, dtype=torch.int32, device=device)
        kc = vc = None
        if self.has_cache:
            kc, vc = (torch.randn(B, s["cache"], hkv, self.head_dim, dtype=self.dtype, device=device)
                      for _ in range(2))
        return q, k, v, scalars[0], scalars[1], rows, kc, vc

    def _bench_fwd(self, bucket, config, device="cuda", batch=None):
        q, k, v, cache_lengths, causal_rows, rows, kc, vc = self._bench_inputs(bucket, device, batch)
        return lambda: self.forward(q, k, v, cache_lengths, causal_rows, rows, self.head_dim ** -0.5, kc, vc,
                                    store_lse=self.backward_kernels, config=config)

    def _bench_backward_state(self, bucket, device, batch):
        q, k, v, _, causal_rows, rows, _, _ = self._bench_inputs(bucket, device, batch)
        scale = self.head_dim ** -0.5
        out, lse = self.forward(q, k, v, None, causal_rows, rows, scale, store_lse=True)
        do = torch.randn_like(q)
        return do, q, k, v, lse, _softmax_delta(do, out, k.shape[2], self.group), causal_rows, rows, scale

    def _bench_bwd_dq(self, bucket, config, device="cuda", batch=None):
        state = self._bench_backward_state(bucket, device, batch)
        return lambda: self.backward_dq(*state, config=config)

    def _bench_bwd_dkdv(self, bucket, config, device="cuda", batch=None):
        state = self._bench_backward_state(bucket, device, batch)
        return lambda: self.backward_dkdv(*state, config=config)


class _AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, host, q, k, v, cache_lengths, causal_rows, rows, scale, k_cache, v_cache):
        needs_grad = any(ctx.needs_input_grad[1:4])
        out, lse = host.forward(q, k, v, cache_lengths, causal_rows, rows, scale, k_cache, v_cache,
                                store_lse=needs_grad)
        if needs_grad:
            ctx.save_for_backward(q, k, v, out, lse, causal_rows, rows)
            ctx.host, ctx.scale = host, scale
        return out

    @staticmethod
    def backward(ctx, do):
        if not ctx.host.backward_kernels:
            raise RuntimeError(f"{ctx.host.name}: the {ctx.host.layout} layout is inference-only; "
                               "train with the training layout")
        q, k, v, out, lse, causal_rows, rows = ctx.saved_tensors
        dq, dk, dv = ctx.host.backward(do, q, k, v, out, lse, causal_rows, rows, ctx.scale)
        return None, dq, dk, dv, None, None, None, None, None, None
