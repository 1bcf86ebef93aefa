"""Divergence of a student's from a teacher's softmax over a linear LM head, without the full logits.

`linear_divergence(student, teacher, weight, divergence)` gives, per row, D(p || q) with
p = softmax(teacher @ W.T) (a fixed target: no gradient reaches the teacher rows or W through p)
and q = softmax(student @ W.T):
  forward_kl: KL(p || q) = sum_v p_v (log p_v - log q_v);      d/dz_q = q - p
  tv:         TV(p, q)   = 1/2 sum_v |p_v - q_v|;              d/dz_q = q * (s - <q, s>), s = sign(q - p) / 2
Rows go through in chunks like zdiff.train.linear_ce (a chunk holds up to CHUNK_ARRAYS (rows, V) fp32 arrays:
both log-softmaxes, both probabilities and a temporary, so a fifth of its row budget); backward recomputes both
logits of a chunk.
TV is what lossless acceptance pays (accept = 1 - TV(p, q) for one draft); forward KL bounds it (Pinsker:
TV <= sqrt(KL / 2)) and has the smooth gradient.
"""

from __future__ import annotations

import torch

from .linear_ce import _compute_dtype, backprop_chunk, chunk_rows, gradient_buffers

DIVERGENCES = ("forward_kl", "tv")
CHUNK_ARRAYS = 5  # (rows, V) fp32 arrays of a chunk alive at once: the row budget is linear_ce's / 5


def _chunk_terms(h_student, h_teacher, head, divergence: str, gradient: bool):
    """(divergence per row, d divergence / d student logits or None) for one chunk, fp32; in place where it can,
    so at most CHUNK_ARRAYS (rows, V) arrays are alive at once."""
    log_q = (h_student @ head.t()).float()
    log_q -= log_q.logsumexp(-1, keepdim=True)
    log_p = (h_teacher @ head.t()).float()
    log_p -= log_p.logsumexp(-1, keepdim=True)
    p, q = log_p.exp(), log_q.exp()
    if divergence == "forward_kl":
        value = torch.sub(log_p, log_q).mul_(p).sum(-1)
        return value, (q.sub_(p) if gradient else None)
    value = torch.sub(p, q).abs_().sum(-1)
    if not gradient:
        return value.mul_(0.5), None
    del log_p, log_q
    qs = torch.sub(q, p).sign_().mul_(0.5).mul_(q)  # q * s with s = sign(q - p) / 2
    return value.mul_(0.5), qs.addcmul_(q, qs.sum(-1, keepdim=True), value=-1.0)  # q * (s - <q, s>)


class LinearDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, weight, divergence: str, rows_per_chunk: int, compute_dtype: torch.dtype):
        # student, teacher (N, H); weight (V, H) -> (N,) fp32
        with torch.autocast(student.device.type, enabled=False), torch.no_grad():
            head = weight.to(compute_dtype)
            out = torch.empty(student.shape[0], dtype=torch.float32, device=student.device)
            for start in range(0, student.shape[0], rows_per_chunk):
                rows = slice(start, start + rows_per_chunk)
                out[rows] = _chunk_terms(student[rows].to(compute_dtype), teacher[rows].to(compute_dtype), head,
                                         divergence, gradient=False)[0]
        ctx.save_for_backward(student, teacher, weight)
        ctx.divergence, ctx.rows_per_chunk, ctx.compute_dtype = divergence, rows_per_chunk, compute_dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        student, teacher, weight = ctx.saved_tensors
        dtype, step = ctx.compute_dtype, ctx.rows_per_chunk
        want_student, _, want_weight = ctx.needs_input_grad[:3]
        with torch.autocast(student.device.type, enabled=False), torch.no_grad():
            head = weight.to(dtype)
            grad_student, grad_weight = gradient_buffers(student, weight, want_student, want_weight)
            for start in range(0, student.shape[0], step):
                rows = slice(start, start + step)
                h = student[rows].to(dtype)
                _, grad_logits = _chunk_terms(h, teacher[rows].to(dtype), head, ctx.divergence, gradient=True)
                g = grad_logits.mul_(grad_out[rows, None].float()).to(dtype)
                del grad_logits
                backprop_chunk(g, h, head, rows, grad_student, grad_weight)
        # the teacher is a target: no gradient to it (stop-gradient), whatever its requires_grad
        return grad_student, None, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None


def linear_divergence(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor, divergence: str,
                      rows_per_chunk: int | None = None) -> torch.Tensor:
    """Per-row D(softmax(teacher @ W.T) || softmax(student @ W.T)), shape student.shape[:-1], fp32; gradients
    to `student` and `weight` through the student's logits only."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    shape = student.shape[:-1]
    rows = rows_per_chunk or max(1, chunk_rows(weight.shape[0]) // CHUNK_ARRAYS)
    out = LinearDivergence.apply(student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1]),
                                 weight, divergence, rows, _compute_dtype(student))
    return out.view(shape)
