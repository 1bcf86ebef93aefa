"""The logit-mix rule, written once: w * z_AR + (1 - w) * z_draft with masked logits floored first.

A masked logit is -inf (a banned id, a filtered token); a zero weight times -inf would be NaN (0 * -inf).
Flooring both sides to -3e38 first keeps every product finite, a floored logit still gets probability
exactly 0 after the softmax shift, and finite logits mix exactly as written (w = 1 is the lossless target
bit for bit). `mix_logits` is the torch form (the reference loop, the engine's torch backend),
`_mix` the Triton form (the verifier and filter kernels); tests compare them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FINITE_FLOOR = -3.0e38  # below every real logit, above -inf
_FLOOR = tl.constexpr(FINITE_FLOOR)


def mix_logits(ar_logits: torch.Tensor, draft_logits: torch.Tensor, weight) -> torch.Tensor:
    """fp32 w * z_AR + (1 - w) * z_draft, both floored to FINITE_FLOOR; weight a float or a broadcastable tensor."""
    return weight * ar_logits.float().clamp_min(FINITE_FLOOR) + (1 - weight) * draft_logits.float().clamp_min(
        FINITE_FLOOR)


@triton.jit
def _mix(za, zd, mix_weight):
    """`mix_logits` in a kernel. Two max ops rather than selects on the weight: the verifier's sampling kernel
    has no registers to spare on sm_90."""
    za = tl.maximum(za, _FLOOR)
    zd = tl.maximum(zd, _FLOOR)
    return mix_weight * za + (1.0 - mix_weight) * zd
