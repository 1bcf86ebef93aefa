"""The decode engine's keyed generator: the Triton implementation (interpreter) gives the torch twin's bits for
every purpose at extreme seeds and positions; the torch twin equals lowbias32 computed with Python integers;
its uniforms and Gumbel-max draws are distributed as claimed (chi-square, with a power check)."""

import pytest
import torch

from conftest import DEVICE
from generation_helpers import chi_square_p_value
from zdiff.generation import keyed_rng
from zdiff.generation.batched_sampling import gumbel_race

MASK = 0xFFFFFFFF


def _lowbias32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK
    return x ^ (x >> 16)


def test_torch_hash_is_lowbias32_on_python_integers():
    gen = torch.Generator().manual_seed(0)
    xs = torch.cat([torch.tensor([0, 1, MASK, 0x80000000, 0x7FFFFFFF]),
                    torch.randint(0, 2**32, (200,), generator=gen, dtype=torch.int64)])
    assert keyed_rng.hash32(xs).tolist() == [_lowbias32(int(x)) for x in xs]
    seed, position = 2**62 + 12345, 2**35 + 7
    key = _lowbias32((seed & MASK) ^ 0x9E3779B9)
    key = _lowbias32(key ^ (seed >> 32))
    key = _lowbias32(key ^ (position & MASK))
    key = _lowbias32(key ^ (position >> 32) ^ keyed_rng.purpose_salt(keyed_rng.DRAFT))
    assert int(keyed_rng.row_key(torch.tensor(seed), torch.tensor(position), keyed_rng.DRAFT)) == key
    assert int(keyed_rng.token_bits(torch.tensor(key), torch.tensor(41))) == _lowbias32(_lowbias32(key ^ 41) ^ key)


@pytest.mark.parametrize("purpose", [keyed_rng.ACCEPT, keyed_rng.RESAMPLE, keyed_rng.DRAFT])
def test_kernel_bits_equal_the_torch_twin(purpose):
    """Same bits for ragged vocabularies (37 ids in one chunk, 1100 over two) at seeds up to 2^63 - 1 and
    positions past 2^32 (the high words enter the key)."""
    gen = torch.Generator().manual_seed(purpose)
    seed = torch.cat([torch.tensor([0, 1, 2**63 - 1, 2**32]), torch.randint(0, 2**62, (4,), generator=gen)])
    position = torch.cat([torch.tensor([0, 2**32, 5, 2**40 + 3]), torch.randint(0, 2**20, (4,), generator=gen)])
    for vocab in (37, 1100):
        kernel = keyed_rng.kernel_token_bits(seed.to(DEVICE), position.to(DEVICE), purpose, vocab).cpu()
        twin = keyed_rng.token_bits(keyed_rng.row_key(seed, position, purpose)[:, None], torch.arange(vocab))
        assert torch.equal(kernel, twin)
        assert kernel.min() >= 0 and kernel.max() <= MASK and kernel.unique().numel() > 0.99 * kernel.numel()
    other = keyed_rng.token_bits(keyed_rng.row_key(seed, position, purpose % 3 + 1)[:, None], torch.arange(37))
    assert not torch.equal(other, twin[:, :37])  # the purpose is part of the key


def test_accept_uniforms_are_uniform():
    """20,000 positions of one seed in 20 bins: uniform; the same counts reject a slightly tilted law."""
    u = keyed_rng.accept_uniforms(torch.tensor(7), torch.arange(20000))
    assert u.dtype == torch.float32 and 0 < u.min() and u.max() < 1
    counts = torch.bincount((u * 20).long(), minlength=20).double()
    assert chi_square_p_value(counts, torch.full((20,), 1 / 20)) > 1e-3
    tilted = torch.linspace(0.9, 1.1, 20)
    assert chi_square_p_value(counts, tilted / tilted.sum()) < 1e-3


def test_gumbel_max_draws_follow_the_softmax():
    """5,000 keyed Gumbel-max draws over 6 logits (one banned as -inf) follow softmax; the same counts reject
    the softmax at another temperature (power)."""
    z = torch.tensor([1.0, 0.2, -0.5, float("-inf"), 0.7, -1.2])
    noise = keyed_rng.gumbel_noise(torch.tensor(3), torch.arange(5000)[:, None], keyed_rng.DRAFT, 6)[:, 0]
    draws = gumbel_race(z.expand(5000, 6), noise)
    counts = torch.bincount(draws, minlength=6).double()
    assert counts[3] == 0
    assert chi_square_p_value(counts, torch.softmax(z, -1)) > 1e-3
    assert chi_square_p_value(counts, torch.softmax(z / 0.8, -1)) < 1e-3
