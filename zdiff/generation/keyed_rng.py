"""The decode engine's one random number generator: counter-based, keyed on (seed, token position, purpose).

Every draw of a request is a pure function of its seed, the token position the draw decides, what it
decides (ACCEPT: the acceptance uniform, RESAMPLE: the verifier's categorical draw, DRAFT: a draft's
categorical draw) and, for categorical draws, the token id whose Gumbel noise it is. So a request's draws
do not depend on its slot, its neighbours or how many steps it took, a captured graph replays them with no
host involvement, and the same function runs in two implementations that give the same bits:

  - torch (`row_key`, `token_bits`, ...): uint32 arithmetic held in int64 tensors (products formed from
    16-bit halves of the constant, so nothing overflows int64), for the CPU engine and the tests;
  - Triton (`_row_key`, `_token_bits`, ...): the same operations on uint32 inside the kernels (the verifier,
    the draft sampler), where unsigned products wrap modulo 2^32 by definition.

The mixer is "lowbias32" (Chris Wellons' integer hash search), a 32-bit avalanche hash:
    row key   = H(H(H(H(seed_lo ^ C0) ^ seed_hi) ^ pos_lo) ^ pos_hi ^ salt(purpose))
    bits(tok) = H(H(row key ^ tok) ^ row key)
    unit(b)   = ((b >> 9) + 1/2) * 2^-23          (an fp32 in (0, 1), exact: 24 significant bits)
    uniform   = unit(bits(0)) of the ACCEPT key;  Gumbel(tok) = -log(-log(unit(bits(tok))))
Why this hash and not Triton's Philox (`tl.randint`): the torch twin must reproduce the bits with int64 ops,
and lowbias32 needs two 32-bit multiplies per round, where Philox-4x32-10 needs 20 high-and-low 32x32
products (each four 16-bit products in int64); the kernels pay ~24 integer ops per vocabulary entry, far
below the memory time of reading its logit. The outer hash in `bits` breaks the coincidence
key1 ^ tok1 == key2 ^ tok2 between rows whose keys differ only in low bits.

The integer bits are identical on every device. The float transforms (log in the Gumbel noise, exp in the
softmax statistics) are correctly rounded on the CPU paths the tests compare (torch and the interpreter's
numpy) and within an ulp or two on a GPU, so a token can differ between devices only when two candidates'
keys tie to within an ulp (see NOTES.md, "Decode engine: randomness").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MASK32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x846CA68B
_SEED_SALT = 0x9E3779B9
_PURPOSE_MUL = 0x632BE5AB

# what a draw decides; part of the key so the draws for one position are independent
ACCEPT, RESAMPLE, DRAFT = 1, 2, 3


def purpose_salt(purpose: int) -> int:
    return (purpose * _PURPOSE_MUL) & MASK32


# ----------------------------------------------------------------------------------------------- torch


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32) held in int64."""
    low = x * (c & 0xFFFF)
    high = ((x * (c >> 16)) & 0xFFFF) << 16
    return (low + high) & MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 of x in [0, 2^32) held in int64."""
    x = x ^ (x >> 16)
    x = _mul32(x, _M1)
    x = x ^ (x >> 15)
    x = _mul32(x, _M2)
    return x ^ (x >> 16)


def row_key(seed: torch.Tensor, position: torch.Tensor, purpose: int) -> torch.Tensor:
    """The 32-bit key (int64) of the broadcast of `seed` (int64 in [0, 2^63)) and `position` (int64 >= 0)."""
    key = hash32((seed & MASK32) ^ _SEED_SALT)
    key = hash32(key ^ (seed >> 32))
    key = hash32(key ^ (position & MASK32))
    return hash32(key ^ (position >> 32) ^ purpose_salt(purpose))


def token_bits(key: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """32 random bits (int64) per (key, token id) of the broadcast."""
    return hash32(hash32(key ^ token) ^ key)


def unit_float(bits: torch.Tensor) -> torch.Tensor:
    """fp32 in (0, 1): the top 23 bits, centred in their interval."""
    return (bits >> 9).float() * (2.0 ** -23) + (2.0 ** -24)


def accept_uniforms(seed: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """fp32 acceptance uniforms in (0, 1) of the broadcast of seed and position."""
    return unit_float(token_bits(row_key(seed, position, ACCEPT), torch.zeros((), dtype=torch.int64,
                                                                              device=seed.device)))


def gumbel_noise(seed: torch.Tensor, position: torch.Tensor, purpose: int, vocab: int) -> torch.Tensor:
    """fp32 Gumbel noise (..., vocab) for the broadcast of seed and position: the noise of token id v at
    [..., v]."""
    key = row_key(seed, position, purpose)[..., None]
    u = unit_float(token_bits(key, torch.arange(vocab, device=key.device)))
    return -torch.log(-torch.log(u))


# ---------------------------------------------------------------------------------------------- Triton

_M1_C = tl.constexpr(_M1)
_M2_C = tl.constexpr(_M2)
_SEED_SALT_C = tl.constexpr(_SEED_SALT)
MASK32_C = tl.constexpr(MASK32)
ACCEPT_SALT = tl.constexpr(purpose_salt(ACCEPT))
RESAMPLE_SALT = tl.constexpr(purpose_salt(RESAMPLE))
DRAFT_SALT = tl.constexpr(purpose_salt(DRAFT))


@triton.jit
def _hash32(x):
    """lowbias32 of uint32 x (unsigned products wrap modulo 2^32)."""
    x = x ^ (x >> 16)
    x = x * _M1_C
    x = x ^ (x >> 15)
    x = x * _M2_C
    return x ^ (x >> 16)


@triton.jit
def _u32(x):
    """The low 32 bits of an int64 as uint32."""
    return (x & MASK32_C).to(tl.uint32)


@triton.jit
def _row_key(seed, position, salt):
    """`row_key` of int64 seed and position (scalars or blocks); salt: a constexpr purpose_salt(purpose)."""
    key = _hash32(_u32(seed) ^ _SEED_SALT_C)
    key = _hash32(key ^ _u32(seed >> 32))
    key = _hash32(key ^ _u32(position))
    return _hash32(key ^ _u32(position >> 32) ^ salt)


@triton.jit
def _token_bits(key, token):
    return _hash32(_hash32(key ^ token.to(tl.uint32)) ^ key)


@triton.jit
def _unit_float(bits):
    return (bits >> 9).to(tl.float32) * 1.1920928955078125e-07 + 5.960464477539063e-08  # 2^-23, 2^-24


@triton.jit
def _accept_uniform(seed, position, salt):
    key = _row_key(seed, position, salt)
    return _unit_float(_token_bits(key, key * 0))


@triton.jit
def _gumbel_of(key, token):
    """Gumbel noise of token ids `token` under a row key."""
    return -tl.log(-tl.log(_unit_float(_token_bits(key, token))))


@triton.jit
def keyed_bits_kernel(seed_ptr, position_ptr, out_ptr, N, V, SALT: tl.constexpr, BLOCK: tl.constexpr):
    """The token bits of rows (seed[r], position[r]) over ids 0..V-1, (N, V) int64: the test that the
    in-kernel generator and the torch twin give the same bits."""
    r = tl.program_id(0)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    key = _row_key(tl.load(seed_ptr + r), tl.load(position_ptr + r), SALT)
    bits = _token_bits(key, idx)
    tl.store(out_ptr + r.to(tl.int64) * V + idx, bits.to(tl.int64), mask=idx < V)


def kernel_token_bits(seed: torch.Tensor, position: torch.Tensor, purpose: int, vocab: int) -> torch.Tensor:
    """`token_bits(row_key(seed, position, purpose), 0..vocab-1)` computed by the Triton implementation."""
    n = seed.numel()
    out = torch.empty((n, vocab), dtype=torch.int64, device=seed.device)
    block = min(1024, triton.next_power_of_2(vocab))
    keyed_bits_kernel[(n, triton.cdiv(vocab, block))](seed.contiguous(), position.contiguous(), out, n, vocab,
                                                       SALT=purpose_salt(purpose), BLOCK=block)
    return out
