"""The cache commit in one Triton launch (zdiff.generation.commit_kernel, interpreter on the CPU) against the
per-layer torch commit it replaces (SlotCache.commit_torch), bit for bit: random storage, stashes written into
the scratch (as the CCA host does) or made elsewhere and copied in (the reference model), ragged accepted counts
(idle slots included), a bucket view of the slots, CCGQA and GQA."""

import dataclasses

import pytest
import torch

from launch_counter import count_launches
from zdiff.generation.slots import SlotCache
from zdiff.spec import load_spec

NAMES = ("k", "v", "state_qk", "state_delayed")


def _spec(layers, kind="ccgqa"):
    model = load_spec("zaya1-tiny").model
    attention = model.attention if kind == "ccgqa" else dataclasses.replace(model.attention, kind="gqa", cca=None)
    return dataclasses.replace(model, num_layers=layers, attention=attention)


def _caches(spec, slots, rows, dtype, gen, scratch_rows):
    kernel = SlotCache(spec, slots, max_len=12, spare=rows, dtype=dtype, device="cpu", scratch_rows=scratch_rows,
                       kernels=True)
    oracle = SlotCache(spec, slots, max_len=12, spare=rows, dtype=dtype, device="cpu")
    for name in NAMES:
        t = getattr(kernel, name)
        t.copy_(torch.randn(t.shape, generator=gen).to(dtype))
        getattr(oracle, name).copy_(t)
    return kernel, oracle


def _stash(part, reference, bucket, rows, dtype, gen, in_scratch):
    rf, channels, delayed = part.receptive_field, part.state_qk.shape[-1], part.state_delayed.shape[-1]
    heads, dim = part.k.shape[3:]
    for layer, ref_layer in zip(part.layers, reference.layers):
        if in_scratch:  # what the CCA host does: its GEMM and kernel write the scratch views
            projection, k, v = layer.stash_buffers(bucket, rows)
            for t in (projection, k, v):
                t.copy_(torch.randn(t.shape, generator=gen).to(dtype))
            qk, late = projection[..., :channels], projection[..., channels:channels + delayed]
        else:
            qk, late = (torch.randn(bucket, rows, w, generator=gen).to(dtype) for w in (channels, delayed))
            k, v = (torch.randn(bucket, rows, heads, dim, generator=gen).to(dtype) for _ in range(2))
        if rf:
            ref_layer.stash_projections(qk.clone(), late.clone())
            layer.stash_projections(qk, late)
        ref_layer.stash_kv(k.clone(), v.clone())
        layer.stash_kv(k, v)


@pytest.mark.parametrize("kind,dtype,in_scratch", [("ccgqa", torch.float32, True), ("ccgqa", torch.float16, True),
                                                   ("ccgqa", torch.float32, False), ("gqa", torch.float16, False)])
@pytest.mark.parametrize("layers,slots,bucket,rows,written", [(2, 3, 3, 5, 5), (3, 4, 2, 9, 6)])
def test_commit_kernel_is_the_per_layer_torch_commit(kind, dtype, in_scratch, layers, slots, bucket, rows, written):
    gen = torch.Generator().manual_seed(layers * 10 + rows)
    kernel, oracle = _caches(_spec(layers, kind), slots, rows, dtype, gen, scratch_rows=slots * rows)
    part, reference = kernel.view(0, bucket), oracle.view(0, bucket)
    _stash(part, reference, bucket, rows, dtype, gen, in_scratch)
    lengths = torch.randint(0, 13, (bucket,), generator=gen)
    counts = torch.randint(0, written + 1, (bucket,), generator=gen)
    counts[0] = 0  # an idle slot: its rows land past its length, its state stays
    counts[-1] = written
    with count_launches() as counter:
        part.commit(lengths, counts, written)
    assert dict(counter.triton) == {"commit_kernel": 1} and not counter.torch_ops, (counter.triton, counter.torch_ops)
    reference.commit(lengths, counts, written)
    for name in NAMES:
        assert torch.equal(getattr(kernel, name), getattr(oracle, name)), name
    assert all(not layer.pending for layer in part.layers)


def test_a_pass_larger_than_the_scratch_commits_with_torch_ops():
    gen = torch.Generator().manual_seed(3)
    kernel, oracle = _caches(_spec(2), 2, 4, torch.float32, gen, scratch_rows=7)
    assert kernel.layers[0].stash_buffers(2, 4) is None
    _stash(kernel, oracle, 2, 4, torch.float32, gen, in_scratch=False)
    lengths, counts = torch.tensor([0, 3]), torch.tensor([2, 4])
    with count_launches() as counter:
        kernel.commit(lengths, counts, 4)
    assert not counter.triton
    oracle.commit(lengths, counts, 4)
    for name in NAMES:
        assert torch.equal(getattr(kernel, name), getattr(oracle, name)), name
