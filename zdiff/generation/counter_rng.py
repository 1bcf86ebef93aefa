"""Counter-based uniforms in plain torch integer ops: u = hash(seed, position, purpose).

The decode engine draws every random number of a request from its own seed and the token
position the number decides, never from a generator's running state. So a request's draws do
not depend on which slot it sits in, on its neighbours, or on how many steps it took to get
there, and a captured CUDA/HIP graph replays them without host involvement (a stateful
`torch.Generator` would need its offset advanced by the host).

Reusing a key is safe where it happens: a position's draft draw is redone only when the draft
at that position was discarded untested, so the earlier draw influenced nothing committed (see
NOTES.md, "Decode engine: randomness").

The hash is "lowbias32" (Chris Wellons' integer hash search), a 32-bit avalanche mix. Products
are formed in int64 from 16-bit halves of the multiplier, so no intermediate overflows int64
(signed overflow is not something to rely on across backends).
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF

# what a uniform decides; part of the key so the draws for one position are independent
ACCEPT, RESAMPLE, DRAFT = 1, 2, 3


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32) held in int64."""
    low = x * (c & 0xFFFF)
    high = ((x * (c >> 16)) & 0xFFFF) << 16
    return (low + high) & MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    x = x & MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _key(seed: torch.Tensor, position: torch.Tensor, purpose: int) -> torch.Tensor:
    key = hash32(seed ^ 0x9E3779B9)
    key = hash32(key ^ (seed >> 32))
    key = hash32(key ^ position)
    return hash32(key ^ (position >> 32) ^ (purpose * 0x632BE5AB))


def uniforms(seed: torch.Tensor, position: torch.Tensor, purpose: int) -> torch.Tensor:
    """float64 uniforms in [0, 1) with 53 random bits, one per element of the broadcast of
    `seed` and `position` (int64 tensors; seed in [0, 2^63), position >= 0)."""
    key = _key(seed, position, purpose)
    hi = hash32(key ^ 0x1B873593) >> 6  # 26 bits
    lo = hash32(key ^ 0xCC9E2D51) >> 5  # 27 bits
    return (hi * (1 << 27) + lo).double() * (2.0 ** -53)


def stream_keys(seed: torch.Tensor, position: torch.Tensor, purpose: int) -> torch.Tensor:
    """int64 keys in [0, 2^63) for a counter-based generator run over the vocabulary (the fused
    verifier's Philox, `tl.rand(key, token_id)`): one independent stream per (seed, position, purpose)."""
    key = _key(seed, position, purpose)
    hi = hash32(key ^ 0x85EBCA6B) >> 1  # 31 bits: the key stays non-negative
    lo = hash32(key ^ 0xC2B2AE35)
    return (hi << 32) | lo
