"""The three TiDAR layouts of DESIGN.md as patterns (the specification lives there)."""

from __future__ import annotations

from functools import lru_cache

from ..errors import ZdiffError
from .segments import KeyRange, Pattern, Segment

CAUSAL = KeyRange(0, None)


def _blocks(total: int, block_size: int):
    for i, first in enumerate(range(0, total, block_size)):
        yield i, first, min(block_size, total - first)


@lru_cache(maxsize=4096)  # patterns are immutable; decoding asks for the same few shapes
def causal_pattern(length: int) -> Pattern:
    """A plain causal sequence (AR prefill)."""
    if length < 1:
        raise ZdiffError(f"causal pattern needs length >= 1, got {length}")
    return Pattern("causal", (Segment("prompt", 0, length, 0, -1, (CAUSAL,)),), 1)


@lru_cache(maxsize=4096)  # patterns are immutable; decoding asks for the same few shapes
def training_pattern(seq_len: int, block_size: int) -> Pattern:
    """[x_0 .. x_{S-1} | M x S]: clean half causal; mask block i sees clean positions < i*b and itself.

    Both halves use positions 0..S-1. A block's first mask follows the clean token just before
    the block (its predecessor chain runs into the clean half), the others follow each other.
    A last, shorter block covers S mod b.
    """
    if seq_len < 1 or block_size < 1:
        raise ZdiffError(f"training pattern needs seq_len >= 1 and block_size >= 1, got {seq_len}, {block_size}")
    S = seq_len
    segments = [Segment("clean", 0, S, 0, -1, (CAUSAL,))]
    for i, first, length in _blocks(S, block_size):
        rows = KeyRange(S + first, S + first + length)
        visible = (KeyRange(0, first), rows) if first else (rows,)
        segments.append(Segment(f"mask[{i}]", S + first, length, first, first - 1, visible))
    return Pattern("training", tuple(segments), block_size)


@lru_cache(maxsize=4096)  # patterns are immutable; decoding asks for the same few shapes
def prefill_pattern(prompt_len: int, block_size: int) -> Pattern:
    """The prompt (causal), then one mask block at the next b positions that sees the whole prompt.

    The first new token is sampled from the last prompt row; it takes slot 0 of the block,
    so this pass's drafts are slots 1..b-1.
    """
    if prompt_len < 1 or block_size < 1:
        raise ZdiffError(f"prefill pattern needs prompt_len >= 1 and block_size >= 1, got {prompt_len}, {block_size}")
    P, b = prompt_len, block_size
    return Pattern("prefill", (
        Segment("prompt", 0, P, 0, -1, (CAUSAL,)),
        Segment("mask[0]", P, b, P, P - 1, (KeyRange(0, P), KeyRange(P, P + b))),
    ), b)


@lru_cache(maxsize=4096)  # patterns are immutable; decoding asks for the same few shapes
def decode_pattern(context_len: int, drafts: int, block_size: int, levels: tuple[int, ...]) -> Pattern:
    """One decode step, with the committed context spelled out as (non-query) rows.

    context: x_{<L-1}, rows 0..C-1 (in the KV cache in practice; C = L - 1).
    verify:  [c, d_1..d_m] at positions L-1..L-1+m, causal over context + itself.
    proposal[a=...]: b masks at positions L+a.., seeing the context, verify rows 0..a and
    itself; its first mask follows verify row a. No levels: a plain AR step (verify rows only).
    """
    C, m, b = context_len, drafts, block_size
    if C < 0:
        raise ZdiffError(f"decode pattern: context_len must be >= 0, got {C}")
    if not 0 <= m < b:
        raise ZdiffError(f"decode pattern: drafts must be in 0..{b - 1} (block_size - 1), got {m}")
    if list(levels) != sorted(set(levels)) or not all(0 <= a <= m for a in levels):
        raise ZdiffError(f"decode pattern: levels must be strictly increasing in 0..{m} (drafts), got {list(levels)}")
    L = C + 1
    segments = []
    if C:
        segments.append(Segment("context", 0, C, 0, -1, (CAUSAL,), query=False))
    segments.append(Segment("verify", C, m + 1, L - 1, C - 1, (CAUSAL,)))
    row = C + m + 1
    for a in levels:
        segments.append(Segment(f"proposal[a={a}]", row, b, L + a, C + a,
                                (KeyRange(0, C + a + 1), KeyRange(row, row + b))))
        row += b
    return Pattern("decode", tuple(segments), b, tuple(levels))
