"""The cache commit in one Triton launch (zdiff.generation.commit_kernel, interpreter on the CPU) against the
per-layer torch commit it replaces (SlotCache.commit_torch), bit for bit: random storage, stashes written into
the scratch, ragged accepted counts (idle slots included), a bucket view of the slots."""

import dataclasses

import pytest
import torch

from launch_counter import count_launches
from zdiff.generation.slots import SlotCache
from zdiff.spec import load_spec


def _spec(layers):
    model = load_spec("zaya1-tiny").model
    return dataclasses.replace(model, num_layers=layers)


def _fill(cache: SlotCache, gen: torch.Generator):
    for t in (cache.k, cache.v, cache.state_qk, cache.state_delayed):
        t.copy_(torch.randn(t.shape, generator=gen).to(t.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layers,slots,bucket,rows,written", [(2, 3, 3, 5, 5), (3, 4, 2, 9, 6)])
def test_commit_kernel_is_the_per_layer_torch_commit(dtype, layers, slots, bucket, rows, written):
    gen = torch.Generator().manual_seed(layers * 10 + rows)
    spec = _spec(layers)
    kernel = SlotCache(spec, slots, max_len=12, spare=rows, dtype=dtype, device="cpu", scratch_rows=slots * rows,
                       kernels=True)
    oracle = SlotCache(spec, slots, max_len=12, spare=rows, dtype=dtype, device="cpu")
    _fill(kernel, gen)
    for name in ("k", "v", "state_qk", "state_delayed"):
        getattr(oracle, name).copy_(getattr(kernel, name))
    channels = kernel.state_qk.shape[-1]
    delayed = kernel.state_delayed.shape[-1]
    part, reference = kernel.view(0, bucket), oracle.view(0, bucket)
    for layer, ref_layer in zip(part.layers, reference.layers):
        projection, k, v = layer.stash_buffers(bucket, rows)
        for t in (projection, k, v):
            t.copy_(torch.randn(t.shape, generator=gen).to(dtype))
        layer.stash_projections(projection[..., :channels], projection[..., channels:channels + delayed])
        layer.stash_kv(k, v)
        ref_layer.stash_projections(layer.pending["qk"].clone(), layer.pending["delayed"].clone())
        ref_layer.stash_kv(k.clone(), v.clone())
    lengths = torch.randint(0, 13, (bucket,), generator=gen)
    counts = torch.randint(0, written + 1, (bucket,), generator=gen)
    counts[0] = 0  # an idle slot: its rows land past its length, its state stays
    counts[-1] = written
    with count_launches() as counter:
        part.commit(lengths, counts, written)
    assert dict(counter.triton) == {"commit_kernel": 1} and not counter.torch_ops, (counter.triton, counter.torch_ops)
    reference.commit(lengths, counts, written)
    for name in ("k", "v", "state_qk", "state_delayed"):
        assert torch.equal(getattr(kernel, name), getattr(oracle, name)), name
    assert all(not layer.pending for layer in part.layers)


def test_stashes_outside_the_scratch_commit_with_torch_ops():
    """A stash the reference model made (its own tensors) is committed layer by layer, not misread as scratch."""
    spec = _spec(2)
    cache = SlotCache(spec, 2, max_len=8, spare=4, dtype=torch.float32, device="cpu", scratch_rows=8, kernels=True)
    projection, k, v = cache.layers[0].stash_buffers(2, 4)
    assert projection.shape == (2, 4, cache.projection_width) and k.shape == (2, 4, 2, 32)
    assert cache.layers[0].stash_buffers(3, 4) is None  # more rows than the scratch holds
    for layer in cache.layers:
        layer.stash_projections(torch.randn(2, 4, cache.state_qk.shape[-1]),
                                torch.randn(2, 4, cache.state_delayed.shape[-1]))
        layer.stash_kv(torch.randn(2, 4, 2, 32), torch.randn(2, 4, 2, 32))
    new_k = cache.layers[1].pending["k"].clone()
    with count_launches() as counter:
        cache.commit(torch.tensor([0, 3]), torch.tensor([2, 4]), 4)
    assert not counter.triton
    assert torch.equal(cache.k[1, 1, 3:7], new_k[1])
