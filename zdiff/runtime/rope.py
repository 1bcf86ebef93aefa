"""Partial rotary embeddings (rotate-half convention on the first rotary_dim dims of a head), with the
long-context frequency scalings of Hugging Face configs (linear, llama3, yarn)."""

from __future__ import annotations

import math

import torch

from ..spec.schema import RopeScalingSpec


def inverse_frequencies(rotary_dim: int, theta: float, scaling: RopeScalingSpec | None = None,
                        device=None) -> tuple[torch.Tensor, float]:
    """(rotary_dim / 2,) fp32 inverse frequencies and the factor cos and sin are scaled by (yarn; else 1),
    computed as transformers' rope init functions compute them."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim
    inv_freq = 1.0 / (theta ** exponents)
    if scaling is None:
        return inv_freq, 1.0
    if scaling.kind == "linear":
        return inv_freq / scaling.factor, 1.0
    if scaling.kind == "llama3":
        return _llama3(inv_freq, scaling), 1.0
    return _yarn(inv_freq, rotary_dim, theta, scaling), scaling.attention_factor


def _llama3(inv_freq: torch.Tensor, s: RopeScalingSpec) -> torch.Tensor:
    """Long wavelengths / factor, short ones kept, a smooth blend between (Llama 3.1+)."""
    low_wavelen = s.original_max_position / s.low_freq_factor
    high_wavelen = s.original_max_position / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


def _yarn(inv_freq: torch.Tensor, dim: int, theta: float, s: RopeScalingSpec) -> torch.Tensor:
    """Interpolate (divide by factor) the dims that turn fewer than beta_slow times over the original context,
    keep those turning more than beta_fast times, ramp linearly between (YaRN, arXiv 2309.00071)."""

    def correction_dim(rotations: float) -> float:
        return dim * math.log(s.original_max_position / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=inv_freq.device) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (the frequency unchanged), 0: interpolate
    return inv_freq / s.factor * (1 - keep) + inv_freq * keep


def rope_cos_sin(positions: torch.Tensor, rotary_dim: int, theta: float, dtype: torch.dtype,
                 scaling: RopeScalingSpec | None = None):
    """cos, sin of shape (*positions.shape, rotary_dim), computed in fp32 then cast."""
    inv_freq, attention_factor = inverse_frequencies(rotary_dim, theta, scaling, positions.device)
    freqs = positions.float()[..., None] * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    cos, sin = angles.cos(), angles.sin()
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos.to(dtype), sin.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, heads, head_dim); cos/sin: (B, T, rotary_dim). Dims past rotary_dim pass through."""
    rotary_dim = cos.shape[-1]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)
