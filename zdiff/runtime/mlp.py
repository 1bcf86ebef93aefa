"""The dense SwiGLU feed-forward of Llama / Qwen2.5 / Qwen3 layers in the reference model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import ModelSpec


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of the [gate | up] halves of the last dim: (..., 2I) -> (..., I)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class DenseMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up stacked into one (2I, H) weight: one GEMM reads x once.

    The layout matches the experts' gate_up (zdiff.runtime.moe.Experts), so an import concatenates HF's
    gate_proj and up_proj along the output dim."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        H, ffn = spec.hidden_size, spec.mlp.ffn_size
        self.gate_up = nn.Linear(H, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, H, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(swiglu(self.gate_up(x)))
