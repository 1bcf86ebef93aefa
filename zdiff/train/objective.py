"""Training objectives: plain AR, and TiDAR's L = (alpha * L_AR + L_diff) / (1 + alpha).

A batch is a window of S + 1 tokens per sequence. AR: rows x_0..x_{S-1} predict
x_1..x_S. TiDAR: the input is [x_0..x_{S-1} | M x S] in the training layout; clean row j
predicts x_{j+1} (AR), mask row j predicts x_j (diffusion, no shift).

The diffusion term (spec `diffusion.loss`) is data_weight * CE(x_j) + distill_weight * D(p_j || q_j):
self-distillation toward p_j = the model's own AR distribution of x_j, read from clean row j - 1 of the
same forward with no gradient through it (zdiff.train.linear_distill); mask row 0 has no teacher. The
logged diffusion loss stays the unweighted data cross-entropy, so runs with different targets compare.

With `diffusion.loss.draft_acceptance` = r, both terms average the mask rows weighted by their block slot:
slot s weighs how often decoding judges that slot's draft when each draft is accepted with probability r
and the next drafts come from the spec's acceptance levels (zdiff.autotune.cost.draft_slot_weights).
Uniform weights are TiDAR's loss; these spend the capacity where decoding looks.

Losses come from the final hidden states and the LM head in chunks (zdiff.train.linear_ce):
no (B, rows, V) logits. Backend "torch" (the reference model) also gets the dense visibility
mask it reads; backend "triton" (the generated model) gets only the BatchLayout, so nothing
of size rows x rows is built on that path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..autotune.cost import draft_slot_weights
from ..errors import ZdiffError
from ..loading import BACKENDS
from ..pattern import BatchLayout, training_pattern
from ..runtime.moe import Routing
from ..spec import Spec
from .linear_ce import linear_cross_entropy
from .linear_distill import linear_divergence


@dataclass
class LossParts:
    total: torch.Tensor
    ar: torch.Tensor  # mean nats per token
    diffusion: torch.Tensor | None  # the data cross-entropy of the mask rows, whatever the targets
    routings: list[Routing]
    distillation: torch.Tensor | None = None  # mean D(p_AR || q_draft) when diffusion.loss.distill_weight > 0


class Objective:
    """Builds the inputs of one mode once per sequence length and computes its loss."""

    def __init__(self, spec: Spec, mode: str, seq_len: int, backend: str = "torch",
                 draft_expert_budget: int | None = None):
        if mode not in ("ar", "tidar"):
            raise ZdiffError(f"--mode must be ar or tidar, got {mode!r}")
        if backend not in BACKENDS:
            raise ZdiffError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.mode, self.seq_len = mode, seq_len
        self.draft_expert_budget = draft_expert_budget  # TiDAR: mask rows route under the decode-time budget
        self.block_size = spec.diffusion.block_size
        self.alpha = spec.diffusion.loss_alpha
        self.targets = spec.diffusion.loss
        self.mask_id = spec.diffusion.mask_token_id
        if mode == "tidar":
            if self.mask_id is None:
                raise ZdiffError("diffusion.mask_token_id is null: TiDAR training needs a mask token "
                                 "(set it in the spec, or convert with --init, which adds one)")
            pattern = training_pattern(seq_len, spec.diffusion.block_size)
            self.positions = pattern.positions()
            self.predecessors = pattern.predecessors()
            self.visible = pattern.dense_mask() if backend == "torch" else None
            self.slot_weights = None  # per mask row; None: uniform
            if self.targets.draft_acceptance is not None:
                by_slot = torch.tensor(draft_slot_weights(spec.diffusion.acceptance_levels, self.block_size,
                                                          self.targets.draft_acceptance))
                self.slot_weights = by_slot[torch.arange(seq_len) % self.block_size]

    def __call__(self, model, window: torch.Tensor) -> LossParts:
        """window: (B, S + 1) token ids."""
        x, labels = window[:, :-1], window[:, 1:]
        if self.mode == "ar":
            layout = BatchLayout.training(len(x), x.shape[1], self.block_size, diffusion=False)
            out = model(x, return_routings=True, layout=layout)
            ar = linear_cross_entropy(out.hidden, out.head, labels).mean()
            return LossParts(ar, ar.detach(), None, out.routings)
        device = window.device
        ids = torch.cat([x, torch.full_like(x, self.mask_id)], dim=1)
        out = model(ids, positions=self.positions.to(device), predecessors=self.predecessors.to(device),
                    visible=None if self.visible is None else self.visible.to(device), return_routings=True,
                    layout=BatchLayout.training(len(x), self.seq_len, self.block_size,
                                                draft_expert_budget=self.draft_expert_budget))
        ar, diffusion, distillation, diffusion_term = self.tidar_terms(out.hidden, out.head, window)
        total = (self.alpha * ar + diffusion_term) / (1 + self.alpha)
        return LossParts(total, ar.detach(), diffusion.detach(), out.routings,
                         None if distillation is None else distillation.detach())

    def tidar_terms(self, hidden: torch.Tensor, head: torch.Tensor, window: torch.Tensor):
        """(AR CE, diffusion data CE, distillation or None, the diffusion term trained) from hidden (B, 2S, H)."""
        S, x, labels = self.seq_len, window[:, :-1], window[:, 1:]
        nll = linear_cross_entropy(hidden, head, torch.cat([labels, x], dim=1))  # (B, 2S)
        ar, diffusion = nll[:, :S].mean(), nll[:, S:].mean()
        weights, slots = self.targets, self.slot_weights
        data = diffusion if slots is None else _weighted_mean(nll[:, S:], slots)
        if weights.distill_weight == 0 or S < 2:
            return ar, diffusion, None, data if weights.data_weight == 1 else weights.data_weight * data
        # mask row j (index S + j) drafts x_j; clean row j - 1 holds p(x_j | x_<j): the teacher, detached
        per_row = linear_divergence(hidden[:, S + 1:], hidden[:, :S - 1].detach(), head, weights.divergence)
        distillation = per_row.mean() if slots is None else _weighted_mean(per_row, slots[1:])
        return ar, diffusion, distillation, weights.data_weight * data + weights.distill_weight * distillation


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the weights-weighted average of values (B, n) along n."""
    weights = weights.to(values.device, values.dtype)
    return (values * weights).sum(-1).mean() / weights.sum()
