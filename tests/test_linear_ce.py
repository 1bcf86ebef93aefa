"""The chunked linear cross-entropy (zdiff.train.linear_ce) against F.cross_entropy on full logits:
per-row losses and both gradients, ragged chunks, fp64 golden, and bf16 autocast against the same
computation with autocast."""

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close
from zdiff.train.linear_ce import chunk_rows, linear_cross_entropy


def _inputs(rows, hidden, vocab, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, hidden, generator=gen, dtype=dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=gen, dtype=dtype) * 0.3).requires_grad_()
    labels = torch.randint(0, vocab, (rows,), generator=gen)
    weights = torch.rand(rows, generator=gen, dtype=dtype)  # each row's weight in the loss (the two TiDAR halves)
    return h, w, labels, weights


def _reference(h, w, labels, weights):
    nll = F.cross_entropy((h @ w.t()).float(), labels, reduction="none")
    return nll, (nll * weights).sum()


@pytest.mark.parametrize("rows,hidden,vocab,chunk", [(37, 24, 341, 5), (64, 16, 97, 64), (9, 41, 1031, 1000)])
def test_matches_full_logits_in_fp32_and_fp64(rows, hidden, vocab, chunk):
    h, w, labels, weights = _inputs(rows, hidden, vocab)
    nll = linear_cross_entropy(h, w, labels, rows_per_chunk=chunk)
    (nll * weights).sum().backward()
    got = nll.detach(), h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref_nll, ref_loss = _reference(h, w, labels, weights)
    ref_loss.backward()
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    gold_nll, gold_loss = _reference(h64, w64, labels, weights.double())
    gold_loss.backward()
    assert_close(got[0], gold_nll, rtol=1e-5, atol=1e-6, what="nll vs fp64")
    assert_close(got[0], ref_nll, rtol=1e-5, atol=1e-6, what="nll vs fp32 full logits")
    assert_close(got[1], h64.grad, rtol=1e-5, atol=1e-6, what="d hidden vs fp64")
    assert_close(got[2], w64.grad, rtol=1e-5, atol=1e-6, what="d weight vs fp64")
    assert_close(got[1], h.grad, rtol=1e-5, atol=1e-6, what="d hidden vs fp32 full logits")
    assert_close(got[2], w.grad, rtol=1e-5, atol=1e-6, what="d weight vs fp32 full logits")


def test_batched_shapes_and_frozen_weight():
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(2, 5, 8, generator=gen, requires_grad=True)
    w = torch.randn(19, 8, generator=gen)  # no gradient wanted for the head
    labels = torch.randint(0, 19, (2, 5), generator=gen)
    nll = linear_cross_entropy(h, w, labels, rows_per_chunk=3)
    assert nll.shape == (2, 5)
    nll.mean().backward()
    ref = F.cross_entropy((h @ w.t()).reshape(-1, 19), labels.reshape(-1))
    assert_close(nll.mean(), ref, rtol=1e-6, what="mean loss")
    grad = h.grad.clone()
    h.grad = None
    ref.backward()
    assert_close(grad, h.grad, rtol=1e-5, atol=1e-7, what="d hidden")


def test_bf16_autocast_matches_autocast_full_logits():
    """Under autocast the matmuls run in bf16 as `hidden @ weight.T` would, the softmax in fp32."""
    h, w, labels, weights = _inputs(33, 32, 200, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll = linear_cross_entropy(h, w, labels, rows_per_chunk=8)
        ref_nll = F.cross_entropy((h @ w.t()).float(), labels, reduction="none")
    assert nll.dtype == torch.float32
    assert_close(nll, ref_nll, rtol=2e-3, atol=2e-3, what="bf16 nll")
    (nll * weights).sum().backward()
    got = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    (ref_nll * weights).sum().backward()
    assert_close(got[0], h.grad, rtol=3e-2, atol=3e-3, what="bf16 d hidden")
    assert_close(got[1], w.grad, rtol=3e-2, atol=3e-3, what="bf16 d weight")
    assert w.grad.dtype == got[1].dtype == torch.float32  # the head's gradient is accumulated in fp32


def test_chunk_rows_bounds_the_logits():
    assert chunk_rows(262_272) == 255  # ZAYA1-8B: 256 MiB of fp32 logits per chunk
    assert chunk_rows(10, budget=100) == 2 and chunk_rows(10**9) == 1
