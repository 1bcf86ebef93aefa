"""Sampler arithmetic for a whole batch of slots at once, on the device, with no host sync.

Every slot carries its own parameters as (S,) tensors: sampler kind, temperature, top-k,
top-p, mix weight and seed. Rows of a slot share its parameters. The maths is the one of
`zdiff.generation.oracle.sampling` (whose `processed_logits` calls `process_logits` here, so the
reference and the engine cannot drift); only the randomness differs: every draw is keyed on (seed,
token position, purpose) by `keyed_rng`, and every categorical draw is a Gumbel-max over the
vocabulary, computed exactly as the fused kernels compute it (`verifier_kernel`, `draft_sampling`),
so the CPU engine and the GPU engine give a seeded request the same tokens.

Shapes: S slots, N rows per slot, V vocabulary, D = drafts per slot (padded), m (S,) real drafts.
"""

from __future__ import annotations

import torch

from .keyed_rng import RESAMPLE, accept_uniforms, gumbel_noise
from .logit_mix import mix_logits

LOSSLESS, LOGIT_MIX, GREEDY = 0, 1, 2
KIND_CODES = {"lossless": LOSSLESS, "logit_mix": LOGIT_MIX, "greedy": GREEDY}


def _per_row(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-slot (S,) parameter (or a scalar) viewed to broadcast over like's (S, ..., V)."""
    return x.reshape(x.shape + (1,) * (like.dim() - x.dim())) if x.dim() else x


def process_logits(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                   banned: torch.Tensor | None = None, filtered: bool = True) -> torch.Tensor:
    """Temperature (a product with its fp32 reciprocal), banned ids, top-k then top-p, as -inf masking, in fp32.

    logits (S, ..., V); temperature, top_k (0 = off), top_p (1 = off): scalars or (S,) tensors;
    banned: int64 ids. Both filters are thresholds on z, ties kept: top-k keeps z >= the k-th largest; top-p
    (over what top-k kept) keeps z iff the probability mass strictly above z is < top_p, so the top token
    always stays. `filter_kernel` computes the same rule without a sort. `filtered=False` skips the sort when
    the caller knows no slot uses top-k or top-p."""
    z = logits.float() * _per_row(1.0 / temperature.float(), logits)  # the reciprocal, as the kernels scale
    if banned is not None and banned.numel():
        z = z.index_fill(-1, banned, float("-inf"))
    if not filtered:
        return z
    V = z.shape[-1]
    sorted_z = torch.sort(z, dim=-1, descending=True).values
    k = _per_row(top_k, z).clamp(0, V)
    kth = sorted_z.gather(-1, (k - 1).clamp_min(0).expand(*z.shape[:-1], 1).long())
    kth = torch.where(k > 0, kth, torch.full_like(kth, float("-inf")))
    sorted_z = sorted_z.masked_fill(sorted_z < kth, float("-inf"))
    probs = torch.softmax(sorted_z, dim=-1)
    # mass strictly before each sorted entry (an exclusive cumsum: nondecreasing, so the kept entries are a prefix)
    before = torch.nn.functional.pad(torch.cumsum(probs, dim=-1)[..., :-1], (1, 0))
    p = _per_row(top_p, z)
    kept = (before < p).sum(-1, keepdim=True).clamp_min(1)
    tau = torch.where(p < 1.0, torch.maximum(sorted_z.gather(-1, kept - 1), kth), kth)
    return z.masked_fill(z < tau, float("-inf"))


TINY = 1e-30  # keeps log away from 0 in discarded entries (as vocab_kernels.TINY)


def mixed_targets(ar_logits: torch.Tensor, draft_logits: torch.Tensor, num_drafts: torch.Tensor, kind: torch.Tensor,
                  mix_weight: torch.Tensor) -> torch.Tensor:
    """fp32 target logits (S, D+1, V) before temperature: `logit_mix.mix_logits` of z_AR and z_draft on the drafted
    rows of logit_mix slots, z_AR everywhere else."""
    target = ar_logits.float()
    D = target.shape[1] - 1
    if not D:
        return target
    drafted = torch.arange(D + 1, device=target.device)[None, :] < num_drafts[:, None]
    padded = torch.cat([draft_logits[:, :D].float(), target[:, D:]], dim=1)
    mix = ((kind == LOGIT_MIX)[:, None] & drafted)[..., None]
    return torch.where(mix, mix_logits(target, padded, mix_weight.float()[:, None, None]), target)


def gumbel_race(log_weights: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """argmax(log_weights + noise) over the last axis, -inf entries excluded: a categorical draw from
    softmax(log_weights) (the Gumbel-max trick), ties to the smallest index as the kernels break them."""
    return torch.where(log_weights > float("-inf"), log_weights + noise, float("-inf")).argmax(-1)


def log_positive(weights: torch.Tensor) -> torch.Tensor:
    """log(w) where w > 0, else -inf, with the kernels' floor (log(max(w, TINY)))."""
    return torch.where(weights > 0, torch.log(weights.clamp_min(TINY)), float("-inf"))


def verify(ar_logits: torch.Tensor, draft_logits: torch.Tensor, drafts: torch.Tensor, num_drafts: torch.Tensor,
           first_position: torch.Tensor, kind: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
           top_p: torch.Tensor, mix_weight: torch.Tensor, seed: torch.Tensor, banned: torch.Tensor | None,
           filtered: bool, given: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch backend of `verify.verify_slots`: (accepted n (S,), token (S,) placed at first_position + n).

    ar_logits (S, D+1, V): verify rows c, d_1..d_D (raw logits, any float dtype); draft_logits (S, D, V): the raw
    logits each draft was sampled from; drafts (S, D) with num_drafts m (S,) real ones; first_position (S,):
    the position of d_1. lossless / logit_mix: accept d_{i+1} iff u * q_i(d) < p_i(d); at the first
    rejection draw from max(0, p_i - q_i) (p_i if that is all zero); after m acceptances a bonus draw
    from p_m. logit_mix verifies against softmax(w z_AR + (1 - w) z_draft) on drafted rows. greedy: accept
    while d equals argmax p. Draws: the ACCEPT uniform of position first + i, and the RESAMPLE Gumbel noise of
    position first + n (or `given` (uniforms (S, D), noise (S, D+1, V)) for draw-for-draw tests)."""
    S, rows, V = ar_logits.shape
    D = rows - 1
    row = torch.arange(rows, device=ar_logits.device)
    t = process_logits(mixed_targets(ar_logits, draft_logits, num_drafts, kind, mix_weight), temperature, top_k,
                       top_p, banned, filtered)
    p = torch.softmax(t, dim=-1)
    best = t.argmax(-1)  # (S, D+1)
    greedy = kind == GREEDY
    n = torch.zeros(S, dtype=torch.long, device=ar_logits.device)
    if D:
        q = torch.softmax(process_logits(draft_logits[:, :D], temperature, top_k, top_p, banned, filtered), dim=-1)
        d = drafts[:, :D].clamp(0, V - 1)[..., None]
        p_d, q_d = p[:, :D].gather(-1, d)[..., 0], q.gather(-1, d)[..., 0]
        u = accept_uniforms(seed[:, None], first_position[:, None] + row[None, :D]) if given is None else given[0]
        drafted = row[None, :D] < num_drafts[:, None]
        accept = torch.where(greedy[:, None], drafts[:, :D] == best[:, :D], u * q_d < p_d) & drafted
        n = accept.long().cumprod(-1).sum(-1)
    if given is None:
        g = gumbel_noise(seed, first_position + n, RESAMPLE, V)
    else:
        g = given[1].gather(1, n[:, None, None].expand(S, 1, V))[:, 0]
    at_n = n[:, None, None].expand(S, 1, V)
    token = gumbel_race(t.gather(1, at_n)[:, 0], g)  # the bonus draw: t_m + noise
    if D:
        p_n = p.gather(1, at_n)[:, 0]
        q_n = q.gather(1, n.clamp_max(D - 1)[:, None, None].expand(S, 1, V))[:, 0]
        residual = p_n - q_n
        from_residual = gumbel_race(log_positive(residual), g)
        from_p = gumbel_race(log_positive(p_n), g)  # p == q up to rounding: a rejection had probability ~0
        resampled = torch.where((residual > 0).any(-1), from_residual, from_p)
        token = torch.where(n < num_drafts, resampled, token)
    return n, torch.where(greedy, best.gather(1, n[:, None])[:, 0], token)
