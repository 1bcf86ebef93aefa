"""DESIGN.md's three layouts transcribed row by row, the truth the visibility rule is tested against."""

import torch


def brute_force_training(S, b):
    """DESIGN.md's words, transcribed row by row."""
    mask = torch.zeros(2 * S, 2 * S, dtype=torch.bool)
    for j in range(S):
        mask[j, : j + 1] = True
    for j in range(S):
        i = j // b
        mask[S + j, : i * b] = True  # clean tokens at positions < i*b
        mask[S + j, S + i * b: S + min((i + 1) * b, S)] = True  # its own block
    return mask


def brute_force_decode(C, m, b, levels):
    R = C + m + 1 + b * len(levels)
    mask = torch.zeros(R, R, dtype=torch.bool)
    for j in range(C + m + 1):
        mask[j, : j + 1] = True  # context and verify rows: causal
    row = C + m + 1
    for a in levels:
        mask[row: row + b, : C + a + 1] = True  # cache + verify rows 0..a
        mask[row: row + b, row: row + b] = True  # itself, bidirectionally
        row += b
    return mask


def brute_force_prefill(P, b):
    mask = torch.zeros(P + b, P + b, dtype=torch.bool)
    for j in range(P):
        mask[j, : j + 1] = True  # the prompt: causal
    mask[P:, :] = True  # the mask block sees the whole prompt and itself
    return mask
