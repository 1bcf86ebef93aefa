"""How many proposal blocks a decode step runs: fixed, or chosen by the cost model.

`auto` picks, for the current number of active slots and their mean context, the P in
0..len(levels) that maximises expected tokens per second: expected tokens per forward from
the engine's running acceptance histogram (`zdiff.autotune.cost.expected_tokens`, with the
spec's first P levels) over the roofline floor of a forward with P blocks
(`CostModel.forward`). P = 0 is plain AR. Until enough steps are measured, the histogram is
blended with the cost model's documented default (`default_acceptance`) as a prior.
"""

from __future__ import annotations

from ..autotune.cost import CostModel, default_acceptance, expected_tokens
from ..autotune.targets import target_rates
from ..errors import ZdiffError
from ..spec import Spec

PRIOR_STEPS = 32  # weight of the default acceptance distribution, in observed steps
DECISION_INTERVAL = 8  # steps between decisions (the cost model is evaluated on the host)


class ProposalPolicy:
    def __init__(self, spec: Spec, levels: tuple[int, ...], proposals: int | str, target: str):
        b = spec.diffusion.block_size
        self.block_size, self.levels = b, levels
        if proposals != "auto" and not (isinstance(proposals, int) and 0 <= proposals <= len(levels)):
            raise ZdiffError(f"proposals must be 'auto' or an integer in 0..{len(levels)} "
                             f"(diffusion.acceptance_levels has {len(levels)}), got {proposals!r}")
        self.fixed = None if proposals == "auto" else proposals
        self.spec, self.target = spec, target
        self.accepted = [0] * b  # steps that accepted n drafts, n = 0..b-1
        self.chosen: dict[int, int] = {}
        self._model: CostModel | None = None
        self._last: tuple[int, int] | None = None
        self._steps_since = DECISION_INTERVAL

    def observe(self, accepted_drafts: int) -> None:
        self.accepted[min(accepted_drafts, self.block_size - 1)] += 1

    def acceptance(self) -> list[float]:
        prior = default_acceptance(self.block_size)
        seen = sum(self.accepted)
        return [(PRIOR_STEPS * p + a) / (PRIOR_STEPS + seen) for p, a in zip(prior, self.accepted)]

    def choose(self, active_slots: int, mean_context: int) -> int:
        if self.fixed is not None or not self.levels:
            p = self.fixed if self.fixed is not None else 0
        elif self._last is not None and self._steps_since < DECISION_INTERVAL:
            p = self._last[1]
        else:
            p = self._decide(max(active_slots, 1), max(mean_context, 0))
        self._steps_since += 1
        self.chosen[p] = self.chosen.get(p, 0) + 1
        return p

    def _decide(self, batch: int, context: int) -> int:
        if self._model is None:
            self._model = CostModel(self.spec, target_rates(self.target))
        accept = self.acceptance()
        rates = []
        for p in range(len(self.levels) + 1):
            tokens = expected_tokens(accept, self.levels[:p], self.block_size)
            rates.append(tokens / self._model.forward(batch, context, p).seconds)
        best = max(range(len(rates)), key=lambda p: (round(rates[p], 9), -p))
        self._last, self._steps_since = (batch, best), 0
        return best

    def report(self) -> dict:
        return {"policy": "auto" if self.fixed is None else f"fixed {self.fixed}", "target": self.target,
                "proposals_used": dict(sorted(self.chosen.items())), "accepted_drafts_histogram": list(self.accepted)}
