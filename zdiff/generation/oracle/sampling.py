"""Samplers of the speculative verifier (reference implementation).

Notation for one sequence and one step: verify row i (i = 0..m) gives the target
distribution of position L+i; draft d_{i+1} sits at position L+i and was sampled from q_i.
- lossless: accept d_{i+1} with probability min(1, p_i(d)/q_i(d)); at the first rejection
  sample from normalise(max(0, p_i - q_i)) and stop; if all m are accepted, sample a bonus
  token from p_m. The output is distributed exactly as sampling from p.
- logit_mix(w): the same test against softmax(w*z_AR + (1-w)*z_draft) at every drafted
  position (the bonus position has no draft logits and uses p). w = 1 is lossless.
- greedy: accept while d equals argmax p; then take argmax p.
A point-mass draft (greedy drafting) is q = one-hot: accepted with probability p(d), and a
rejection resamples from p with d removed, as the min(1, p/q) rule gives.

All randomness is passed in (uniforms for acceptance, Gumbel noise for categorical draws),
so the fused Triton verifier can be checked against this code draw for draw.
"""

from __future__ import annotations

import torch

from ...errors import ZdiffError
from ...sampler import SamplingParams
from ..batched_sampling import process_logits
from ..logit_mix import mix_logits


def processed_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, banned ids, top-k and top-p as -inf masking, in fp32 (same for p and q).

    The arithmetic lives in `batched_sampling.process_logits` (the engine's), so both agree."""
    device = logits.device
    banned = torch.tensor(params.banned, dtype=torch.long, device=device) if params.banned else None
    filtered = bool(params.top_k) or params.top_p < 1.0
    return process_logits(logits, torch.tensor(params.temperature, device=device),
                          torch.tensor(params.top_k, device=device), torch.tensor(params.top_p, device=device),
                          banned, filtered)


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    return torch.softmax(processed_logits(logits, params), dim=-1)


def gumbel_argmax(weights: torch.Tensor, gumbel: torch.Tensor) -> torch.Tensor:
    """A categorical draw proportional to `weights` (>= 0) by the Gumbel-max trick."""
    return torch.argmax(torch.log(weights) + gumbel, dim=-1)


def draw_gumbel(shape, generator: torch.Generator, device=None) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    return (-torch.log(-torch.log(u))).float().to(device)


def target_probs(ar_logits: torch.Tensor, draft_logits: torch.Tensor | None, params: SamplingParams) -> torch.Tensor:
    """(m+1, V) verification targets; rows 0..m-1 are mixed with the draft logits under logit_mix."""
    if params.sampler != "logit_mix" or draft_logits is None or params.mix_weight == 1.0:
        return probabilities(ar_logits, params)
    m = draft_logits.shape[0]
    mixed = ar_logits.float().clone()
    mixed[:m] = mix_logits(ar_logits[:m], draft_logits, params.mix_weight)
    return probabilities(mixed, params)


def verify_stochastic(target: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, uniforms: torch.Tensor,
                      gumbel: torch.Tensor) -> tuple[int, int]:
    """(accepted drafts n, token placed at position L+n) for target (m+1, V), q (m, V), drafts (m,)."""
    m = drafts.shape[0]
    V = target.shape[-1]
    bad = [int(d) for d in drafts if not 0 <= int(d) < V]
    if bad:
        raise ZdiffError(f"drafts: ids must be in [0, {V}), got {bad[0]}")
    for i in range(m):
        d = int(drafts[i])
        if uniforms[i] * q[i, d] < target[i, d]:  # u < min(1, p/q), without dividing by a tiny q
            continue
        residual = (target[i] - q[i]).clamp_min(0)
        if not residual.any():  # p == q up to rounding: a rejection had probability ~0
            residual = target[i]
        return i, int(gumbel_argmax(residual, gumbel[i]))
    return m, int(gumbel_argmax(target[m], gumbel[m]))


def verify_greedy(target: torch.Tensor, drafts: torch.Tensor) -> tuple[int, int]:
    best = torch.argmax(target, dim=-1)
    m = drafts.shape[0]
    n = 0
    while n < m and int(drafts[n]) == int(best[n]):
        n += 1
    return n, int(best[n])
