"""Host side of the q/k RMSNorm + RoPE kernel of plain GQA layers (template qk_rope.py.jinja): inference only.

Training keeps the differentiable path (the RMSNorm kernels and torch's RoPE): this kernel has no backward, and
`apply` refuses a tensor that needs one rather than silently dropping its gradient."""

from __future__ import annotations

import functools

import torch
import triton

from ..aot import aot_entry
from ..launch import launch_kwargs
from . import ModuleHost


class QKRopeHost(ModuleHost):
    """RoPE(RMSNorm(x)) (module NORM) or RoPE(x) per (token, head); autotune buckets are token-heads."""

    def __init__(self, module):
        super().__init__(module)
        self.D, self.RD, self.NORM = module.D, module.RD, module.NORM
        self.fwd = self.kernel("fwd")
        self.blocks = {"BLOCK_HALF": max(1, triton.next_power_of_2(self.RD // 2)),
                       "BLOCK_REST": max(1, triton.next_power_of_2(self.D - self.RD))}
        self.bench = {f"{self.name}_fwd": self._bench_fwd}

    def apply(self, x: torch.Tensor, weight: torch.Tensor | None, eps: float, cos: torch.Tensor,
              sin: torch.Tensor, config=None) -> torch.Tensor:
        """x (B, T, heads, D) with unit stride along D; cos, sin (B, T, RD) -> (B, T, heads, D) contiguous."""
        if torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad)):
            raise RuntimeError(f"{self.name} has no backward: use the RMSNorm kernel and torch's RoPE to train")
        B, T, heads, D = x.shape
        if D != self.D or cos.shape[-1] != self.RD or x.stride(-1) != 1 or (weight is None) == bool(self.NORM):
            raise ValueError(f"{self.name} was generated for head_dim {self.D}, {self.RD} rotary dims, "
                             f"norm {self.NORM}; got {tuple(x.shape)}, cos {tuple(cos.shape)}")
        cos, sin = cos.expand(B, T, self.RD).contiguous(), sin.expand(B, T, self.RD).contiguous()
        # (B, T) folded into one token index: valid when the token strides nest (true for every projection view)
        if T > 1 and x.stride(0) != T * x.stride(1):
            x = x.contiguous()
        y = torch.empty(B, T, heads, D, dtype=x.dtype, device=x.device)
        if B * T * heads:
            cfg = self.config(f"{self.name}_fwd", B * T * heads, config)
            self.fwd[(B * T, heads)](x, x if weight is None else weight, cos, sin, y, x.stride(1), x.stride(2),
                                     cos.stride(1), heads, eps, D=self.D, RD=self.RD, NORM=self.NORM, **self.blocks,
                                     **launch_kwargs(cfg))
        return y

    @functools.cached_property
    def aot(self) -> dict:
        fixed = {"D": self.D, "RD": self.RD, "NORM": self.NORM, **self.blocks}
        return {f"{self.name}_fwd": aot_entry(self.fwd, self.pointer, fixed, stride_xt="i32", stride_xh="i32",
                                              stride_ct="i32", heads="i32", eps="fp32")}

    def _bench_fwd(self, bucket, config, device="cuda"):
        heads = 8
        tokens = max(1, bucket // heads)
        x = torch.randn(1, tokens, heads, self.D, dtype=self.dtype, device=device)
        w = torch.randn(self.D, dtype=self.dtype, device=device) if self.NORM else None
        cos, sin = (torch.randn(1, tokens, self.RD, dtype=self.dtype, device=device) for _ in range(2))
        return lambda: self.apply(x, w, 1e-6, cos, sin, config=config)
