"""Held-out evaluation: AR loss (nats, bits per byte) and diffusion loss on fixed windows."""

from __future__ import annotations

import math

import torch

from .data import TokenStream
from .objective import Objective


@torch.no_grad()
def evaluate(model, heldout: TokenStream, tidar: Objective | None, seq_len: int, windows: int = 64,
             batch_size: int = 16, device=None) -> dict:
    was_training = model.training
    model.eval()
    data = heldout.windows(seq_len + 1, windows)
    ar_sum = diff_sum = 0.0
    for chunk in data.split(batch_size):
        chunk = chunk.to(device)
        logits = model(chunk[:, :-1])
        ar_sum += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum").item()
        if tidar is not None:
            diff_sum += tidar(model, chunk).diffusion.item() * chunk.shape[0] * seq_len
    model.train(was_training)
    tokens = windows * seq_len
    ar = ar_sum / tokens
    result = {"heldout_ar_nats": ar, "heldout_ar_bits_per_byte": ar / math.log(2) * heldout.tokens_per_byte}
    if tidar is not None:
        result["heldout_diffusion_nats"] = diff_sum / tokens
    return result
