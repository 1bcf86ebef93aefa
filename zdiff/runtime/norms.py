"""RMSNorm and ZAYA1's residual scaling, with the dtype handling of the HF reference."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # statistics in fp32, the product in the input dtype (matches transformers bit for bit)
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class ResidualScaling(nn.Module):
    """x <- (x + b_r) * s_r + (f + b_o) * s_o; x is the fp32 residual stream, f the block output."""

    def __init__(self, dim: int):
        super().__init__()
        self.out_scale = nn.Parameter(torch.ones(dim))
        self.out_bias = nn.Parameter(torch.zeros(dim))
        self.residual_scale = nn.Parameter(torch.ones(dim))
        self.residual_bias = nn.Parameter(torch.zeros(dim))

    def forward(self, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return (out + self.out_bias) * self.out_scale + (residual + self.residual_bias) * self.residual_scale
