"""Host side of the CCA kernels (template cca.py.jinja): launchers, autograd, AOT signatures, benchmark hooks.

The model-facing entry is `project_qkv` (one GEMM for [q | k | v_delayed | v_current], then the CCA kernel:
convolutions along the predecessor chain, residual, QK norm, temperature, RoPE, values). The backward writes
per-program partial sums (summed here) and accumulates row gradients with fp32 atomics. Autotune buckets are
rows per launch (batch x this pass's rows).
"""

from __future__ import annotations

import functools

import torch
import triton

from ...errors import ZdiffError
from ...runtime.weights import derived
from ..aot import aot_entry
from ..families.cca import bench_shape
from ..launch import launch_kwargs
from . import ModuleHost

_FP32 = "*fp32"
_SCALARS = {"T": "i32", "S": "i32", "stride_qk": "i32", "stride_cos_b": "i32", "stride_cos_t": "i32", "eps": "fp32",
            "scale": "fp32"}
_BWD_TYPES = {"DG": _FP32, "DQK": _FP32, "DDELAYED": _FP32, "DDW_PART": _FP32, "DDB_PART": _FP32,
              "DTEMP_PART": _FP32, "DFILL_PART": _FP32}


def _as_rows(*tensors):
    """(B, T, width) tensors as the kernels read them: unit channel stride and rows one common stride apart,
    sequence after sequence (views of one fused projection already are); otherwise contiguous copies."""
    stride = tensors[0].stride(1)

    def fits(t):
        return t.stride(2) == 1 and t.stride(1) == stride and (t.shape[0] <= 1 or t.stride(0) == t.shape[1] * stride)
    return tensors if all(map(fits, tensors)) else tuple(t.contiguous() for t in tensors)


def _cat_rows(*parts):
    return torch.cat(parts)


def _taps_first(gw):
    """(CHANNELS, D, K1) grouped-conv weight -> (K1, CHANNELS, D), the layout the kernel reads."""
    return gw.permute(2, 0, 1).contiguous()


class CCAHost(ModuleHost):
    """One CCGQA shape (module constants HQ, HKV, D, RD, K0, K1, DV, BLOCK_DV, CHANNELS)."""

    def __init__(self, module):
        super().__init__(module)
        m = module
        self.HQ, self.HKV, self.D, self.RD, self.K0, self.K1, self.DV = m.HQ, m.HKV, m.D, m.RD, m.K0, m.K1, m.DV
        self.channels = m.CHANNELS
        self.shapes = {"HQ": m.HQ, "HKV": m.HKV, "D": m.D, "RD": m.RD, "K0": m.K0, "K1": m.K1, "DV": m.DV,
                       "BLOCK_DV": m.BLOCK_DV}
        self.fwd, self.bwd, self.bwd_weight = (self.kernel(s) for s in ("fwd", "bwd", "bwd_weight"))
        self.bench = {f"{self.name}_fwd": functools.partial(self._bench_fwd, "fwd"),
                      f"{self.name}_fwd_cached": functools.partial(self._bench_fwd, "fwd_cached"),
                      f"{self.name}_bwd": self._bench_bwd, f"{self.name}_bwd_weight": self._bench_bwd_weight}

    @staticmethod
    def empty(shape, dtype, device):
        """Buffers whose every element a kernel writes (the tests poison them with NaN)."""
        return torch.empty(shape, dtype=dtype, device=device)

    # --- launchers ---------------------------------------------------------------------------------------

    def forward(self, qk, delayed, vcur, vfill, dw_w, dw_b, gw, gb, temp, cos, sin, pred, state_qk, state_delayed,
                gwt=None, config=None, kv_out=None):
        """q (B, T, HQ, D), k (B, T, HKV, D), v (B, T, HKV, D) from qk (B, T, CHANNELS) and predecessors
        pred (B, S + T); `_fwd_cached` when there are S > 0 state rows.

        gwt: gw as (K1, CHANNELS, D), when the caller keeps that copy (the kernel reads taps contiguously).
        kv_out: contiguous (k, v) buffers to write (a cache's stash scratch), else both are allocated.
        qk, vcur and delayed may be views of one fused projection (rows strided, read in place)."""
        HQ, HKV, D = self.HQ, self.HKV, self.D
        B, T, _ = qk.shape
        S = pred.shape[1] - T
        has_state = S > 0
        (qk,), (vcur, delayed) = _as_rows(qk), _as_rows(vcur, delayed)
        q = self.empty((B, T, HQ, D), qk.dtype, qk.device)
        if kv_out is None:
            k = self.empty((B, T, HKV, D), qk.dtype, qk.device)
            v = self.empty((B, T, HKV, D), vcur.dtype, qk.device)
        else:
            k, v = kv_out
        if T == 0:
            return q, k, v
        cfg = self.config(f"{self.name}_fwd_cached" if has_state else f"{self.name}_fwd", B * T, config)
        grid = (triton.cdiv(T, cfg["BLOCK_T"]), HQ + HKV + 1, B)
        state_qk = state_qk if has_state else qk
        state_delayed = state_delayed if has_state else delayed
        gwt = _taps_first(gw) if gwt is None else gwt
        self.fwd[grid](
            qk, state_qk, pred, dw_w, dw_b, gwt, gb, temp, cos, sin, vcur, delayed, state_delayed, vfill, q, k, v, T,
            S, qk.stride(1), vcur.stride(1), cos.stride(0), cos.stride(1), torch.finfo(qk.dtype).eps, D ** 0.5,
            **self.shapes, HAS_STATE=has_state, **launch_kwargs(cfg))
        return q, k, v

    def backward(self, dq, dk, dv, qk, dw_w, dw_b, gw, gb, temp, cos, sin, pred, state_qk):
        """Gradients of (qk, delayed, vcur, vfill, dw_w, dw_b, gw, gb, temp) for output gradients dq, dk, dv."""
        B, T, _ = qk.shape
        dg, dqk, ddelayed, ddw_part, ddb_part, dtemp_part, dfill_part = self.backward_rows(
            dq, dk, dv, qk, dw_w, dw_b, _taps_first(gw), gb, temp, cos, sin, pred, state_qk)
        dgw_part = self.backward_weight(dg, qk, state_qk, pred, dw_w, dw_b)
        dvcur = dv.view(B, T, 2 * self.DV)[..., :self.DV]
        return (dqk.to(qk.dtype), ddelayed, dvcur, dfill_part.sum(0), ddw_part.sum(0).to(dw_w.dtype),
                ddb_part.sum(0).to(dw_b.dtype), dgw_part.sum(0).to(gw.dtype), dg.sum((0, 1)).to(gb.dtype),
                dtemp_part.sum(0).to(temp.dtype))

    def backward_rows(self, dq, dk, dv, qk, dw_w, dw_b, gwt, gb, temp, cos, sin, pred, state_qk, config=None):
        """(dg, dqk, ddelayed, and the per-program partial sums of d dw_w, d dw_b, d temp, d vfill), fp32."""
        HQ, HKV, C, DV = self.HQ, self.HKV, self.channels, self.DV
        B, T, _ = qk.shape
        S = pred.shape[1] - T
        has_state = S > 0
        device, f32 = qk.device, torch.float32
        cfg = self.config(f"{self.name}_bwd", B * T, config)
        tiles = triton.cdiv(T, cfg["BLOCK_T"])
        parts = B * tiles
        dg = self.empty((B, T, C), f32, device)
        dqk = torch.zeros((B, T, C), dtype=f32, device=device)  # atomically accumulated
        ddelayed = torch.zeros((B, T, DV), dtype=f32, device=device)
        ddw_part, ddb_part = self.empty((parts, C, self.K0), f32, device), self.empty((parts, C), f32, device)
        dtemp_part, dfill_part = self.empty((parts, HKV), f32, device), self.empty((parts, DV), f32, device)
        dq, dk, dv = dq.contiguous(), dk.contiguous(), dv.contiguous()
        (qk,) = _as_rows(qk)
        state_qk = state_qk if has_state else qk
        if T:
            self.bwd[(tiles, HQ + HKV + 1, B)](
                dq, dk, dv, qk, state_qk, pred, dw_w, dw_b, gwt, gb, temp, cos, sin,
                dg, dqk, ddelayed, ddw_part, ddb_part, dtemp_part, dfill_part,
                T, S, qk.stride(1), cos.stride(0), cos.stride(1), torch.finfo(qk.dtype).eps, self.D ** 0.5,
                **self.shapes, HAS_STATE=has_state, **launch_kwargs(cfg))
        return dg, dqk, ddelayed, ddw_part, ddb_part, dtemp_part, dfill_part

    def backward_weight(self, dg, qk, state_qk, pred, dw_w, dw_b, config=None):
        """(SPLIT, CHANNELS, D, K1) fp32 partial sums of the grouped conv weight gradient."""
        B, T, _ = qk.shape
        S = pred.shape[1] - T
        has_state = S > 0
        (qk,) = _as_rows(qk)
        state_qk = state_qk if has_state else qk
        cfg = self.config(f"{self.name}_bwd_weight", B * T, config)
        dgw_part = self.empty((cfg["SPLIT"], self.channels, self.D, self.K1), torch.float32, qk.device)
        self.bwd_weight[((self.HQ + self.HKV) * (self.D // cfg["BLOCK_O"]), self.K1, cfg["SPLIT"])](
            dg, qk, state_qk, pred, dw_w, dw_b, dgw_part, B * T, T, S, qk.stride(1), HQ=self.HQ, HKV=self.HKV,
            D=self.D, K0=self.K0, K1=self.K1, HAS_STATE=has_state, **launch_kwargs(cfg))
        return dgw_part

    # --- the model-facing function, with autograd --------------------------------------------------------

    def project_qkv(self, attn, x, cos, sin, predecessors, cache=None):
        """q (B, T, HQ, D), k and v (B, T, HKV, D) of a CCGQA layer after QK norm and RoPE, with autograd.

        Equals `attn.project` + `attn.normalize_qk` + `apply_rope` of the reference Attention `attn`;
        predecessors (B, T), or with a layer cache (B, S + T) extended indices (state rows first), in
        which case this pass's [q|k] and delayed rows are stashed in the cache as the reference does.
        """
        HQ, HKV, D, RD, K0, K1, C, DV = (self.HQ, self.HKV, self.D, self.RD, self.K0, self.K1, self.channels,
                                         self.DV)
        a = attn.spec
        found = (a.kind, a.num_heads, a.num_kv_heads, a.head_dim, a.rotary_dim, a.qk_norm,
                 a.cca.depthwise_kernel if a.cca else None, a.cca.grouped_kernel if a.cca else None)
        if found != ("ccgqa", HQ, HKV, D, RD, "l2", K0, K1):
            raise ZdiffError(f"{self.name} was generated for ccgqa/l2 attention with {HQ} q heads, "
                             f"{HKV} KV heads, head_dim {D}, rotary_dim {RD}, kernels {K0}/{K1}; got {found}")
        B, T, _ = x.shape
        # [q | k | v_delayed | v_current] in one GEMM: the weights concatenated once per weight version
        # (runtime/weights.py; recomputed, so differentiable, when training); the kernel and the cache stash
        # read the three parts as strided views of its output, no copy
        projections = (attn.q_proj, attn.k_proj, attn.v_proj_delayed, attn.v_proj_current)
        w_all = derived(attn, "qkv_weight", _cat_rows, *(p.weight for p in projections))
        b_all = None if attn.q_proj.bias is None else derived(attn, "qkv_bias", _cat_rows,
                                                              *(p.bias for p in projections))
        # at inference a SlotCache hands out stacked scratch for the stash (one kernel then commits every layer)
        buffers = None if cache is None or torch.is_grad_enabled() else cache.stash_buffers(B, T)
        if buffers is None or buffers[0].dtype != x.dtype or buffers[0].shape[-1] != w_all.shape[0]:
            buffers = None
            projected = torch.nn.functional.linear(x, w_all, b_all)  # (B, T, CHANNELS + 2 DV)
        else:
            projected = buffers[0]
            rows, out = x.reshape(B * T, -1), projected.view(B * T, -1)
            if b_all is None:
                torch.mm(rows, w_all.t(), out=out)
            else:
                torch.addmm(b_all, rows, w_all.t(), out=out)
        qk, delayed, vcur = projected.split([C, DV, DV], dim=-1)  # (B, T, CHANNELS), (B, T, DV) x 2
        state_qk = state_delayed = None
        S = 0
        if cache is not None:
            cache.stash_projections(qk, delayed)
            state_qk, state_delayed, S = cache.state_qk, cache.state_delayed, cache.state_qk.shape[1]
        if predecessors.shape != (B, S + T):
            raise ZdiffError(f"predecessors must have shape {(B, S + T)} (batch, state rows + rows), "
                             f"got {tuple(predecessors.shape)}")
        # the value of a missing predecessor: v_proj_delayed of a zero input, i.e. its bias (or zeros)
        vfill = attn.v_proj_delayed.bias
        if vfill is None:
            vfill = derived(attn, "vfill", torch.zeros_like, attn.v_proj_delayed.weight.detach()[:, 0])
        gwt = derived(attn, "gwt", _taps_first, attn.conv_grouped.weight)
        cos, sin = cos.expand(B, T, RD), sin.expand(B, T, RD)
        if cos.stride(-1) != 1:
            cos = cos.contiguous()
        if sin.stride(-1) != 1 or sin.stride()[:2] != cos.stride()[:2]:
            cos, sin = cos.contiguous(), sin.contiguous()
        return _CCAFunction.apply(
            self, qk, delayed, vcur, vfill,
            attn.conv_depthwise.weight.view(C, K0), attn.conv_depthwise.bias, attn.conv_grouped.weight,
            attn.conv_grouped.bias, attn.key_temperature, cos, sin, predecessors.to(torch.int32).contiguous(),
            None if state_qk is None else state_qk.contiguous(),
            None if state_delayed is None else state_delayed.contiguous(), gwt,
            None if buffers is None else buffers[1:])

    # --- ahead-of-time compilation -----------------------------------------------------------------------

    @functools.cached_property
    def aot(self) -> dict:
        ptr, name, shapes = self.pointer, self.name, self.shapes
        weight = {"HQ": self.HQ, "HKV": self.HKV, "D": self.D, "K0": self.K0, "K1": self.K1, "HAS_STATE": False}
        return {
            f"{name}_fwd": aot_entry(self.fwd, ptr, {**shapes, "HAS_STATE": False}, PRED="*i32", stride_v="i32",
                                     **_SCALARS),
            f"{name}_fwd_cached": aot_entry(self.fwd, ptr, {**shapes, "HAS_STATE": True}, PRED="*i32",
                                            stride_v="i32", **_SCALARS),
            f"{name}_bwd": aot_entry(self.bwd, ptr, {**shapes, "HAS_STATE": False}, PRED="*i32", **_BWD_TYPES,
                                     **_SCALARS),
            f"{name}_bwd_weight": aot_entry(self.bwd_weight, ptr, weight, DG=_FP32, PRED="*i32", DGW_PART=_FP32,
                                            N="i32", T="i32", S="i32", stride_qk="i32"),
        }

    # --- benchmark hooks: `bucket` rows (layout from codegen.families.cca.bench_shape: a predecessor chain,
    # committed state rows for `_fwd_cached`); each calls its entry's launcher with `config`; the backward
    # entries take random upstream gradients.

    def _bench_inputs(self, entry, bucket, device, batch):
        C, DV, D, RD = self.channels, self.DV, self.D, self.RD
        s = bench_shape(f"{self.name}_{entry}", bucket, self.K0 + self.K1, batch)
        B, T, S = s["batch"], s["rows"], s["state"]

        def randn(*shape, dtype=self.dtype):
            return torch.randn(*shape, dtype=dtype, device=device)
        qk, delayed, vcur = randn(B, T, C + 2 * DV).split([C, DV, DV], -1)  # as project_qkv's views
        x = {"qk": qk, "delayed": delayed, "vcur": vcur, "vfill": randn(DV), "dw_w": randn(C, self.K0),
             "dw_b": randn(C), "gwt": randn(self.K1, C, D) * D ** -0.5, "gb": randn(C),
             "temp": randn(self.HKV).abs() + 0.5, "cos": randn(B, T, RD), "sin": randn(B, T, RD),
             "pred": (torch.arange(S + T, device=device, dtype=torch.int32) - 1).expand(B, S + T).contiguous()}
        x["state_qk"] = randn(B, S, C) if S else None
        x["state_delayed"] = randn(B, S, DV) if S else None
        return x

    def _bench_fwd(self, entry, bucket, config, device="cuda", batch=None):
        x = self._bench_inputs(entry, bucket, device, batch)
        return lambda: self.forward(x["qk"], x["delayed"], x["vcur"], x["vfill"], x["dw_w"], x["dw_b"], None,
                                    x["gb"], x["temp"], x["cos"], x["sin"], x["pred"], x["state_qk"],
                                    x["state_delayed"], gwt=x["gwt"], config=config)

    def _bench_bwd(self, bucket, config, device="cuda", batch=None):
        x = self._bench_inputs("bwd", bucket, device, batch)
        B, T, _ = x["qk"].shape
        dq = torch.randn(B, T, self.HQ, self.D, dtype=self.dtype, device=device)
        dk, dv = (torch.randn(B, T, self.HKV, self.D, dtype=self.dtype, device=device) for _ in range(2))
        return lambda: self.backward_rows(dq, dk, dv, x["qk"], x["dw_w"], x["dw_b"], x["gwt"], x["gb"], x["temp"],
                                          x["cos"], x["sin"], x["pred"], x["state_qk"], config=config)

    def _bench_bwd_weight(self, bucket, config, device="cuda", batch=None):
        x = self._bench_inputs("bwd_weight", bucket, device, batch)
        B, T, _ = x["qk"].shape
        dg = torch.randn(B, T, self.channels, dtype=torch.float32, device=device)
        return lambda: self.backward_weight(dg, x["qk"], x["state_qk"], x["pred"], x["dw_w"], x["dw_b"],
                                            config=config)


class _CCAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, host, qk, delayed, vcur, vfill, dw_w, dw_b, gw, gb, temp, cos, sin, pred, state_qk,
                state_delayed, gwt=None, kv_out=None):
        q, k, v = host.forward(qk, delayed, vcur, vfill, dw_w, dw_b, gw, gb, temp, cos, sin, pred, state_qk,
                               state_delayed, gwt, kv_out=kv_out)
        ctx.save_for_backward(qk, dw_w, dw_b, gw, gb, temp, cos, sin, pred, state_qk)
        ctx.host, ctx.dtypes = host, (delayed.dtype, vcur.dtype, vfill.dtype)
        return q, k, v

    @staticmethod
    def backward(ctx, dq, dk, dv):
        grads = ctx.host.backward(dq, dk, dv, *ctx.saved_tensors)
        dqk, ddelayed, dvcur, dfill, *params = grads
        delayed_dtype, vcur_dtype, vfill_dtype = ctx.dtypes
        return (None, dqk, ddelayed.to(delayed_dtype), dvcur.to(vcur_dtype), dfill.to(vfill_dtype), *params,
                None, None, None, None, None, None, None)
