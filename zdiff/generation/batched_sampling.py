"""Sampler arithmetic for a whole batch of slots at once, on the device, with no host sync.

Every slot carries its own parameters as (S,) tensors: sampler kind, temperature, top-k,
top-p, mix weight and seed. Rows of a slot share its parameters. The maths is the one of
`zdiff.generation.sampling` (whose `processed_logits` calls `process_logits` here, so the
reference and the engine cannot drift); only the randomness differs: here every draw is an
inverse-CDF draw from a counter-based uniform keyed on (seed, token position, purpose)
(`counter_rng`), which keeps a request's draws independent of its slot and of the batch.

Shapes: S slots, N rows per slot, V vocabulary, D = drafts per slot (padded), m (S,) real drafts.
"""

from __future__ import annotations

import torch

from .counter_rng import ACCEPT, DRAFT, RESAMPLE, uniforms

LOSSLESS, LOGIT_MIX, GREEDY = 0, 1, 2
KIND_CODES = {"lossless": LOSSLESS, "logit_mix": LOGIT_MIX, "greedy": GREEDY}


def _per_row(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-slot (S,) parameter (or a scalar) viewed to broadcast over like's (S, ..., V)."""
    return x.reshape(x.shape + (1,) * (like.dim() - x.dim())) if x.dim() else x


def process_logits(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                   banned: torch.Tensor | None = None, filtered: bool = True) -> torch.Tensor:
    """Temperature, banned ids, top-k then top-p, as -inf masking, in fp32.

    logits (S, ..., V); temperature, top_k (0 = off), top_p (1 = off): scalars or (S,) tensors;
    banned: int64 ids. Ties at the top-k threshold are kept; top-p keeps the smallest prefix of
    the (stably) sorted distribution whose mass reaches top_p, and always the first token.
    `filtered=False` skips the sort when the caller knows no slot uses top-k or top-p."""
    z = logits.float() / _per_row(temperature, logits)
    if banned is not None and banned.numel():
        z = z.index_fill(-1, banned, float("-inf"))
    if not filtered:
        return z
    V = z.shape[-1]
    sorted_z, order = torch.sort(z, dim=-1, descending=True, stable=True)
    k = _per_row(top_k, z).clamp(0, V)
    kth = sorted_z.gather(-1, (k - 1).clamp_min(0).expand(*z.shape[:-1], 1).long())
    kth = torch.where(k > 0, kth, torch.full_like(kth, float("-inf")))
    sorted_z = sorted_z.masked_fill(sorted_z < kth, float("-inf"))
    probs = torch.softmax(sorted_z, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # mass strictly before each token
    p = _per_row(top_p, z)
    sorted_z = sorted_z.masked_fill((before >= p) & (p < 1.0), float("-inf"))
    return torch.empty_like(z).scatter_(-1, order, sorted_z)


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A draw proportional to weights (..., V) >= 0 (not all zero) for each uniform u (...) in [0, 1)."""
    cdf = torch.cumsum(weights.double(), dim=-1)
    x = (u * cdf[..., -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp_max(weights.shape[-1] - 1)


def sample_rows(z: torch.Tensor, kind: torch.Tensor, seed: torch.Tensor, positions: torch.Tensor,
                purpose: int = DRAFT) -> torch.Tensor:
    """One token per row of processed logits z (S, N, V): argmax for greedy slots, else a draw from
    softmax(z) keyed on (seed, positions (S, N), purpose)."""
    probs = torch.softmax(z, dim=-1)
    drawn = inverse_cdf(probs, uniforms(seed[:, None], positions, purpose))
    return torch.where(kind[:, None] == GREEDY, z.argmax(-1), drawn)


def mixed_targets(ar_logits: torch.Tensor, draft_logits: torch.Tensor, num_drafts: torch.Tensor, kind: torch.Tensor,
                  mix_weight: torch.Tensor) -> torch.Tensor:
    """fp32 target logits (S, D+1, V) before temperature: w z_AR + (1 - w) z_draft on the drafted rows of
    logit_mix slots (on raw logits, so a masked -inf never meets a zero weight), z_AR everywhere else."""
    target = ar_logits.float()
    D = target.shape[1] - 1
    if not D:
        return target
    drafted = torch.arange(D + 1, device=target.device)[None, :] < num_drafts[:, None]
    w = mix_weight[:, None, None]
    padded = torch.cat([draft_logits[:, :D].float(), target[:, D:]], dim=1)
    mix = ((kind == LOGIT_MIX)[:, None] & drafted)[..., None]
    return torch.where(mix, w * target + (1 - w) * padded, target)


def verify(ar_logits: torch.Tensor, draft_logits: torch.Tensor, drafts: torch.Tensor, num_drafts: torch.Tensor,
           first_position: torch.Tensor, kind: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
           top_p: torch.Tensor, mix_weight: torch.Tensor, seed: torch.Tensor, banned: torch.Tensor | None,
           filtered: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(accepted n (S,), token (S,) placed at first_position + n) for every slot at once.

    ar_logits (S, D+1, V): verify rows c, d_1..d_D (raw logits); draft_logits (S, D, V): the raw logits
    each draft was sampled from; drafts (S, D) with num_drafts m (S,) real ones; first_position (S,):
    the position of d_1. lossless / logit_mix: accept d_{i+1} iff u * q_i(d) < p_i(d); at the first
    rejection draw from max(0, p_i - q_i) (p_i if that is all zero); after m acceptances a bonus draw
    from p_m. logit_mix verifies against softmax(w z_AR + (1 - w) z_draft) on drafted rows (mixed on raw
    logits, so masked -inf never meets a zero weight). greedy: accept while d equals argmax p."""
    S, rows, V = ar_logits.shape
    D = rows - 1
    row = torch.arange(rows, device=ar_logits.device)
    drafted = row[None, :] < num_drafts[:, None]  # (S, D+1): rows whose draft exists
    target_raw = mixed_targets(ar_logits, draft_logits, num_drafts, kind, mix_weight)
    p = torch.softmax(process_logits(target_raw, temperature, top_k, top_p, banned, filtered), dim=-1)
    best = p.argmax(-1)  # (S, D+1)
    greedy = kind == GREEDY
    if D:
        q = torch.softmax(process_logits(draft_logits[:, :D], temperature, top_k, top_p, banned, filtered), dim=-1)
        d = drafts[:, :D].clamp(0, V - 1)[..., None]
        p_d, q_d = p[:, :D].gather(-1, d)[..., 0], q.gather(-1, d)[..., 0]
        u = uniforms(seed[:, None], first_position[:, None] + row[None, :D], ACCEPT)
        accept = torch.where(greedy[:, None], drafts[:, :D] == best[:, :D], u * q_d < p_d) & drafted[:, :D]
        n = accept.long().cumprod(-1).sum(-1)
    else:
        n = torch.zeros(S, dtype=torch.long, device=ar_logits.device)
    p_n = p.gather(1, n[:, None, None].expand(S, 1, V))[:, 0]
    weights = p_n
    if D:
        q_n = q.gather(1, n.clamp_max(D - 1)[:, None, None].expand(S, 1, V))[:, 0]
        residual = (p_n - q_n).clamp_min(0)
        rejected = (n < num_drafts)[:, None]
        usable = residual.sum(-1, keepdim=True) > 0  # p == q up to rounding: a rejection had probability ~0
        weights = torch.where(rejected & usable, residual, p_n)
    drawn = inverse_cdf(weights, uniforms(seed, first_position + n, RESAMPLE))
    token = torch.where(greedy, best.gather(1, n[:, None])[:, 0], drawn)
    return n, token
