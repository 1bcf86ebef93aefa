"""Held-out evaluation: AR loss (nats, bits per byte) and diffusion loss on fixed windows."""

from __future__ import annotations

import math

import torch

from .objective import Objective
from .shards import TokenRanges


@torch.no_grad()
def evaluate(model, heldout: TokenRanges, ar: Objective, tidar: Objective | None, seq_len: int, windows: int = 64,
             batch_size: int = 16, device=None) -> dict:
    """`ar` scores plain causal windows; `tidar` (when the model has a mask token) their diffusion loss."""
    was_training = model.training
    model.eval()
    data = heldout.windows(seq_len + 1, windows)
    ar_sum = torch.zeros((), dtype=torch.float64, device=device)
    diff_sum = torch.zeros_like(ar_sum)
    for chunk in data.split(batch_size):
        chunk = chunk.to(device)
        ar_sum += ar(model, chunk).ar.double() * len(chunk)
        if tidar is not None:
            diff_sum += tidar(model, chunk).diffusion.double() * len(chunk)
    model.train(was_training)
    ar_nats = ar_sum.item() / windows
    result = {"heldout_ar_nats": ar_nats, "heldout_ar_bits_per_byte": ar_nats / math.log(2) * heldout.tokens_per_byte}
    if tidar is not None:
        result["heldout_diffusion_nats"] = diff_sum.item() / windows
    return result
