"""Host side of the norm family's kernels (templates rmsnorm.py.jinja, residual_rmsnorm.py.jinja).

Both kernels normalise one row per forward program; the backward's programs take ROWS rows each and write
per-program column sums of the weight gradients, summed here (deterministic: no atomics).
"""

from __future__ import annotations

import functools

import torch
import triton

from ..aot import aot_entry
from ..launch import launch_kwargs
from . import ModuleHost


class _RowNormHost(ModuleHost):
    """A forward kernel over rows of width D (one program per row) and its backward (ROWS rows per program)."""

    def __init__(self, module):
        super().__init__(module)
        self.D, self.BLOCK_D = module.D, module.BLOCK_D
        self.fwd, self.bwd = self.kernel("fwd"), self.kernel("bwd")
        self.bench = {f"{self.name}_fwd": self._bench_fwd, f"{self.name}_bwd": self._bench_bwd}


class RMSNormHost(_RowNormHost):
    """RMSNorm over the last dim (module constants D, BLOCK_D); autotune buckets are rows."""

    def forward(self, x2, weight, eps, config=None):
        """(y, rstd) of the rows x2 (N, D), contiguous."""
        n = x2.shape[0]
        y = torch.empty_like(x2)
        rstd = torch.empty(n, dtype=torch.float32, device=x2.device)
        cfg = self.config(f"{self.name}_fwd", n, config)
        self.fwd[(n,)](x2, weight, y, rstd, x2.stride(0), y.stride(0), eps, D=self.D, BLOCK_D=self.BLOCK_D,
                       **launch_kwargs(cfg))
        return y, rstd

    def backward(self, dy2, x2, weight, rstd, config=None):
        """(dx, dw) from dy2 (N, D) contiguous and the forward's rows and rstd."""
        n = x2.shape[0]
        cfg = self.config(f"{self.name}_bwd", n, config)
        programs = triton.cdiv(n, cfg["ROWS"])
        dx = torch.empty_like(x2)
        dw_partial = torch.empty(programs, self.D, dtype=torch.float32, device=x2.device)
        self.bwd[(programs,)](dy2, x2, weight, rstd, dx, dw_partial, n, x2.stride(0), dy2.stride(0), dx.stride(0),
                              D=self.D, BLOCK_D=self.BLOCK_D, **launch_kwargs(cfg))
        return dx, dw_partial.sum(0).to(weight.dtype)

    def apply(self, x, weight, eps):
        """RMSNorm of x (..., D) with autograd through the kernels."""
        return _RMSNormFunction.apply(self, x, weight, eps)

    @functools.cached_property
    def aot(self) -> dict:
        shape = {"D": self.D, "BLOCK_D": self.BLOCK_D}
        return {
            f"{self.name}_fwd": aot_entry(self.fwd, self.pointer, shape, RSTD="*fp32", stride_x="i32",
                                          stride_y="i32", eps="fp32"),
            f"{self.name}_bwd": aot_entry(self.bwd, self.pointer, shape, RSTD="*fp32", DW_PARTIAL="*fp32",
                                          N="i32", stride_x="i32", stride_dy="i32", stride_dx="i32"),
        }

    def _bench_fwd(self, bucket, config, device="cuda"):
        x = torch.randn(bucket, self.D, dtype=self.dtype, device=device)
        w = torch.randn(self.D, dtype=self.dtype, device=device)
        return lambda: self.forward(x, w, 1e-5, config=config)

    def _bench_bwd(self, bucket, config, device="cuda"):
        x, dy = (torch.randn(bucket, self.D, dtype=self.dtype, device=device) for _ in range(2))
        w = torch.randn(self.D, dtype=self.dtype, device=device)
        rstd = torch.rand(bucket, dtype=torch.float32, device=device) + 0.5
        return lambda: self.backward(dy, x, w, rstd, config=config)


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, host, x, weight, eps):
        x2 = x.reshape(-1, host.D).contiguous()  # (N, D)
        y, rstd = host.forward(x2, weight, eps)
        ctx.host = host
        ctx.save_for_backward(x2, weight, rstd)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dx, dw = ctx.host.backward(dy.reshape(-1, ctx.host.D).contiguous(), x2, weight, rstd)
        return None, dx.view(dy.shape), dw, None


class ResidualRMSNormHost(_RowNormHost):
    """ZAYA1's residual-scaling update fused with the next RMSNorm (module constants D, BLOCK_D); buckets are
    rows. The residual stream x and h are fp32; f, the scales / biases and the norm weight the model dtype."""

    def forward(self, x2, f2, params, eps, config=None):
        """(h, y, rstd) of the rows x2 (N, D) fp32, f2 (N, D); params = (s_r, b_r, s_o, b_o, w)."""
        n = x2.shape[0]
        h = torch.empty_like(x2)
        y = torch.empty(n, self.D, dtype=params[-1].dtype, device=x2.device)
        rstd = torch.empty(n, dtype=torch.float32, device=x2.device)
        cfg = self.config(f"{self.name}_fwd", n, config)
        self.fwd[(n,)](x2, f2, *params, h, y, rstd, eps, D=self.D, BLOCK_D=self.BLOCK_D, **launch_kwargs(cfg))
        return h, y, rstd

    def backward(self, dh2, dy2, x2, f2, params, h, rstd, config=None):
        """(dx, df, [d_w, d_sr, d_br, d_so, d_bo]) from the incoming gradients dh2 (fp32), dy2 (N, D)."""
        n = x2.shape[0]
        cfg = self.config(f"{self.name}_bwd", n, config)
        programs = triton.cdiv(n, cfg["ROWS"])
        dx = torch.empty_like(x2)
        df = torch.empty_like(f2)
        partial = torch.empty(5, programs, self.D, dtype=torch.float32, device=h.device)
        self.bwd[(programs,)](dh2, dy2, x2, f2, *params, h, rstd, dx, df, partial, n, D=self.D,
                              BLOCK_D=self.BLOCK_D, **launch_kwargs(cfg))
        return dx, df, [p.sum(0).to(params[-1].dtype) for p in partial]

    def apply(self, x, f, residual_scale, residual_bias, out_scale, out_bias, weight, eps):
        """(new residual stream h in fp32, RMSNorm(h) in the weight dtype), with autograd."""
        return _ResidualRMSNormFunction.apply(self, x, f, residual_scale, residual_bias, out_scale, out_bias,
                                              weight, eps)

    @functools.cached_property
    def aot(self) -> dict:
        shape = {"D": self.D, "BLOCK_D": self.BLOCK_D}
        return {
            f"{self.name}_fwd": aot_entry(self.fwd, self.pointer, shape, X="*fp32", H="*fp32", RSTD="*fp32",
                                          eps="fp32"),
            f"{self.name}_bwd": aot_entry(self.bwd, self.pointer, shape, DH="*fp32", X="*fp32", H="*fp32",
                                          RSTD="*fp32", DX="*fp32", PARTIAL="*fp32", N="i32"),
        }

    def _bench_tensors(self, bucket, device):
        x, h = (torch.randn(bucket, self.D, dtype=torch.float32, device=device) for _ in range(2))
        f = torch.randn(bucket, self.D, dtype=self.dtype, device=device)
        params = [torch.randn(self.D, dtype=self.dtype, device=device) for _ in range(5)]  # sr, br, so, bo, w
        rstd = torch.rand(bucket, dtype=torch.float32, device=device) + 0.5
        return x, f, params, h, rstd

    def _bench_fwd(self, bucket, config, device="cuda"):
        x, f, params, _, _ = self._bench_tensors(bucket, device)
        return lambda: self.forward(x, f, params, 1e-5, config=config)

    def _bench_bwd(self, bucket, config, device="cuda"):
        x, f, params, h, rstd = self._bench_tensors(bucket, device)
        dh = torch.randn(bucket, self.D, dtype=torch.float32, device=device)
        dy = torch.randn(bucket, self.D, dtype=self.dtype, device=device)
        return lambda: self.backward(dh, dy, x, f, params, h, rstd, config=config)


class _ResidualRMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, host, x, f, residual_scale, residual_bias, out_scale, out_bias, weight, eps):
        shape = x.shape
        x2 = x.reshape(-1, host.D).float().contiguous()  # (N, D) fp32 residual stream
        f2 = f.reshape(-1, host.D).contiguous()
        params = (residual_scale, residual_bias, out_scale, out_bias, weight)
        h, y, rstd = host.forward(x2, f2, params, eps)
        ctx.save_for_backward(x2, f2, *params, h, rstd)
        ctx.host, ctx.shape = host, shape
        return h.view(shape), y.view(shape)

    @staticmethod
    def backward(ctx, dh, dy):
        x2, f2, sr, br, so, bo, w, h, rstd = ctx.saved_tensors
        D = ctx.host.D
        dh2 = torch.zeros_like(h) if dh is None else dh.reshape(-1, D).float().contiguous()
        dy2 = torch.zeros(x2.shape[0], D, dtype=w.dtype, device=h.device) if dy is None else \
            dy.reshape(-1, D).contiguous()
        dx, df, (d_w, d_sr, d_br, d_so, d_bo) = ctx.host.backward(dh2, dy2, x2, f2, (sr, br, so, bo, w), h, rstd)
        return None, dx.view(ctx.shape), df.view(ctx.shape), d_sr, d_br, d_so, d_bo, d_w, None
