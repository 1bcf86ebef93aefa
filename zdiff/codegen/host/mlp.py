"""Host side of the dense MLP's fused SwiGLU activation (template swiglu.py.jinja): launchers, autograd, AOT."""

from __future__ import annotations

import functools

import torch
import triton

from ..aot import aot_entry
from ..launch import launch_kwargs
from . import ModuleHost


class SwiGLUHost(ModuleHost):
    """silu(gate) * up over rows of [gate | up] (module constant I); autotune buckets are rows."""

    def __init__(self, module):
        super().__init__(module)
        self.I = module.I
        self.fwd, self.bwd = self.kernel("fwd"), self.kernel("bwd")
        self.bench = {f"{self.name}_fwd": self._bench_fwd, f"{self.name}_bwd": self._bench_bwd}

    def forward(self, gu2: torch.Tensor, config=None) -> torch.Tensor:
        """Y (N, I) of the rows gu2 (N, 2I), contiguous."""
        n = gu2.shape[0]
        y = torch.empty(n, self.I, dtype=gu2.dtype, device=gu2.device)
        if n:
            cfg = self.config(f"{self.name}_fwd", n, config)
            self.fwd[(n, triton.cdiv(self.I, cfg["BLOCK_I"]))](gu2, y, gu2.stride(0), y.stride(0), I=self.I,
                                                                 **launch_kwargs(cfg))
        return y

    def backward(self, dy2: torch.Tensor, gu2: torch.Tensor, config=None) -> torch.Tensor:
        """dGU (N, 2I) from dY (N, I) and the forward's input rows."""
        n = gu2.shape[0]
        dgu = torch.empty_like(gu2)
        if n:
            cfg = self.config(f"{self.name}_bwd", n, config)
            self.bwd[(n, triton.cdiv(self.I, cfg["BLOCK_I"]))](dy2, gu2, dgu, dy2.stride(0), gu2.stride(0),
                                                                 dgu.stride(0), I=self.I, **launch_kwargs(cfg))
        return dgu

    def apply(self, gate_up: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up of gate_up (..., 2I) -> (..., I), with autograd through the kernels."""
        if gate_up.shape[-1] != 2 * self.I:
            raise ValueError(f"{self.name} was generated for gate_up rows of {2 * self.I}; got {gate_up.shape[-1]}")
        return _SwiGLUFunction.apply(self, gate_up)

    @functools.cached_property
    def aot(self) -> dict:
        fixed = {"I": self.I}
        strides = {"stride_gu": "i32"}
        return {
            f"{self.name}_fwd": aot_entry(self.fwd, self.pointer, fixed, stride_y="i32", **strides),
            f"{self.name}_bwd": aot_entry(self.bwd, self.pointer, fixed, stride_dy="i32", stride_dgu="i32",
                                          **strides),
        }

    def _bench_fwd(self, bucket, config, device="cuda"):
        gu = torch.randn(bucket, 2 * self.I, dtype=self.dtype, device=device)
        return lambda: self.forward(gu, config=config)

    def _bench_bwd(self, bucket, config, device="cuda"):
        gu = torch.randn(bucket, 2 * self.I, dtype=self.dtype, device=device)
        dy = torch.randn(bucket, self.I, dtype=self.dtype, device=device)
        return lambda: self.backward(dy, gu, config=config)


class _SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, host, gate_up):
        gu2 = gate_up.reshape(-1, 2 * host.I).contiguous()
        ctx.host, ctx.shape = host, gate_up.shape
        ctx.save_for_backward(gu2)  # silu is recomputed in the backward: no (N, I) activation saved
        return host.forward(gu2).view(*gate_up.shape[:-1], host.I)

    @staticmethod
    def backward(ctx, dy):
        (gu2,) = ctx.saved_tensors
        dgu = ctx.host.backward(dy.reshape(-1, ctx.host.I).contiguous(), gu2)
        return None, dgu.view(ctx.shape)
