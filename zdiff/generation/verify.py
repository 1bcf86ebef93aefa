"""The engine's one verifier API: every slot with its own sampler, keyed draws, no host synchronisation.

Two backends compute the same function of the same inputs, draw for draw (`keyed_rng` bits, Gumbel-max
categorical draws): "fused", three split-vocabulary Triton kernels (`verifier_kernel`; the GPU default, the
interpreter on a CPU), and "torch", the same maths as torch ops (`batched_sampling.verify`; the CPU default).
The reference loop's per-sequence code (`sampling.verify_stochastic`) is the independent oracle of the
acceptance rule that both are tested against (given noise).
"""

from __future__ import annotations

import torch

from ..errors import ZdiffError
from .batched_sampling import verify as torch_verify
from .verifier_kernel import fused_verify_slots

BACKENDS = ("fused", "torch")


def verify_slots(backend: str, ar_logits: torch.Tensor, draft_logits: torch.Tensor, drafts: torch.Tensor,
                 num_drafts: torch.Tensor, first_position: torch.Tensor, kind: torch.Tensor,
                 temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, mix_weight: torch.Tensor,
                 seed: torch.Tensor, banned_id: int, filtered: bool, banned: torch.Tensor | None = None,
                 given: tuple[torch.Tensor, torch.Tensor] | None = None, **launch) -> tuple[torch.Tensor, torch.Tensor]:
    """(accepted n (S,) int64, token (S,) int64 placed at first_position + n) for S slots.

    ar_logits (S, D+1, V): verify rows c, d_1..d_D, raw, in the model dtype; draft_logits (S, D, V): the raw
    logits the drafts were sampled from; drafts (S, D) of which num_drafts (S,) are real; first_position (S,):
    the position of d_1; kind, top_k, seed (S,) int64; temperature, top_p, mix_weight (S,) fp32. banned_id: the
    one id never produced (-1: none; `banned`, its (1,) int64 tensor, saves the torch backend a copy);
    filtered: some slot uses top-k / top-p (a sort runs). given: (uniforms (S, D), Gumbel noise (S, D+1, V))
    instead of the keyed draws. launch: the fused kernels' block_v, splits, num_warps."""
    if backend == "fused":
        return fused_verify_slots(ar_logits, draft_logits, drafts, num_drafts, first_position, kind, temperature,
                                  top_k, top_p, mix_weight, seed, banned_id, filtered, given, **launch)
    if backend != "torch":
        raise ZdiffError(f"verifier must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if banned is None and banned_id >= 0:
        banned = torch.full((1,), banned_id, dtype=torch.long, device=ar_logits.device)
    return torch_verify(ar_logits, draft_logits, drafts, num_drafts, first_position, kind, temperature, top_k, top_p,
                        mix_weight, seed, banned, filtered, given)


def check_draft_ids(drafts: torch.Tensor, num_drafts: torch.Tensor, vocab: int) -> None:
    """Real drafts (the first num_drafts[b] of each row) must be ids in [0, V): the kernels read p(d) and q(d)
    at d, so an id outside would read a neighbouring row or past the end. For callers with drafts from outside
    the engine (the engine's own drafts are sampled in range). Raises ZdiffError (one host read)."""
    if drafts.numel() == 0:
        return
    real = torch.arange(drafts.shape[1], device=drafts.device)[None, :] < num_drafts.to(drafts.device)[:, None]
    ok = ((drafts >= 0) & (drafts < vocab)) | ~real
    if not bool(ok.all()):
        bad = drafts[~ok][0].item()
        raise ZdiffError(f"drafts: ids must be in [0, {vocab}), got {bad}")
