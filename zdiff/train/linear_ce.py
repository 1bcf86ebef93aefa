"""Cross-entropy of a linear LM head without the full logits (a "fused linear cross-entropy").

`linear_cross_entropy(hidden, weight, labels)` gives each row's negative log-likelihood under
softmax(hidden @ weight.T). Rows go through in chunks of at most LOGITS_CHUNK_BYTES of fp32
logits; the forward keeps only each row's log-sum-exp, and the backward recomputes a chunk's
logits, turns them into softmax - onehot in place and multiplies them into the gradients of
the hidden states and of the head. So a step never holds (rows x V) logits: at ZAYA1-8B's
vocabulary (262,272) one chunk is 256 rows. The per-row losses come back as a tensor, so each
caller weighs its halves (AR, diffusion) with plain torch.

Why not Liger-Kernel's LigerFusedLinearCrossEntropyFunction (read for this): it computes the
gradients during the forward with a host sync (`.item()` on the label count) per call, needs
a Triton device for its softmax kernel (CI here is a CPU), and one call per loss half would
hold two fp32 weight-gradient buffers of V x H (2.1 GB each at ZAYA1-8B). This is plain torch
matmuls, the same on the CPU and on GPUs; the matmuls are the cost, the softmax is memory-bound
either way.
"""

from __future__ import annotations

import torch

LOGITS_CHUNK_BYTES = 256 << 20  # fp32 logits of one chunk of rows; the memory formula counts it


def chunk_rows(vocab_size: int, budget: int = LOGITS_CHUNK_BYTES) -> int:
    return max(1, budget // (4 * vocab_size))


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    kind = hidden.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else hidden.dtype


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, rows_per_chunk: int, compute_dtype: torch.dtype):
        # hidden (N, H); weight (V, H); labels (N,) long -> nll (N,) fp32
        with torch.autocast(hidden.device.type, enabled=False):
            head = weight.to(compute_dtype)
            nll = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
            lse = torch.empty_like(nll)
            for start in range(0, hidden.shape[0], rows_per_chunk):
                rows = slice(start, start + rows_per_chunk)
                logits = (hidden[rows].to(compute_dtype) @ head.t()).float()  # (chunk, V)
                lse[rows] = torch.logsumexp(logits, dim=-1)
                nll[rows] = lse[rows] - logits.gather(1, labels[rows, None]).squeeze(1)
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.rows_per_chunk, ctx.compute_dtype = rows_per_chunk, compute_dtype
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        hidden, weight, labels, lse = ctx.saved_tensors
        dtype, step = ctx.compute_dtype, ctx.rows_per_chunk
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        with torch.autocast(hidden.device.type, enabled=False):
            head = weight.to(dtype)
            grad_hidden, grad_weight = gradient_buffers(hidden, weight, want_hidden, want_weight)
            for start in range(0, hidden.shape[0], step):
                rows = slice(start, start + step)
                h = hidden[rows].to(dtype)
                grad_logits = (h @ head.t()).float()  # (chunk, V): logits -> softmax -> (softmax - onehot) * dnll
                grad_logits.sub_(lse[rows, None]).exp_()
                grad_logits[torch.arange(len(h), device=h.device), labels[rows]] -= 1.0
                grad_logits.mul_(grad_nll[rows, None].float())
                g = grad_logits.to(dtype)
                del grad_logits
                backprop_chunk(g, h, head, rows, grad_hidden, grad_weight)
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None


def gradient_buffers(hidden, weight, want_hidden: bool, want_weight: bool):
    """(d hidden, d head in fp32) to fill chunk by chunk; None where not wanted."""
    grad_hidden = torch.empty_like(hidden) if want_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
    return grad_hidden, grad_weight


def backprop_chunk(g, h, head, rows: slice, grad_hidden, grad_weight) -> None:
    """A chunk's d logits `g` (rows, V) into d hidden[rows] = g @ head and d head += g.T @ h."""
    if grad_hidden is not None:
        grad_hidden[rows] = (g @ head).to(grad_hidden.dtype)
    if grad_weight is not None:
        _accumulate_outer(grad_weight, g, h)


def _accumulate_outer(out: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> None:
    """out (V, H) fp32 += g.T @ h. In fp32 in place; in bf16 by vocabulary slices, so the product's
    temporary stays within the logits chunk budget instead of a (V, H) copy."""
    if g.dtype == out.dtype:
        out.addmm_(g.t(), h)
        return
    step = max(1, LOGITS_CHUNK_BYTES // (6 * h.shape[1]))
    for v in range(0, out.shape[0], step):
        out[v:v + step] += (g[:, v:v + step].t() @ h).float()


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         rows_per_chunk: int | None = None) -> torch.Tensor:
    """Per-row NLL (...,) fp32 of labels (...,) under softmax(hidden (..., H) @ weight (V, H).T).
    Under autocast the matmuls run in the autocast dtype (as `hidden @ weight.T` would), softmax in fp32."""
    shape = labels.shape
    rows = rows_per_chunk or chunk_rows(weight.shape[0])
    nll = LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1), rows,
                                   _compute_dtype(hidden))
    return nll.view(shape)
