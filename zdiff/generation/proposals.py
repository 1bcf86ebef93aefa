"""What a decode step runs: P proposal blocks, verify length d, the draft rows' expert budget m.

The engine captures a fixed set of step options (P, d, m) (`ProposalPolicy.options`: one CUDA/HIP graph each
per slot bucket); the policy picks one per step. Fixed P (`proposals=<int>`): P is that; `"auto"`: P in
0..len(levels), P = 0 is plain AR. Among the allowed options (the requests' own caps: `RequestParams
.verify_length`, `.expert_budget`) it takes the one with the most expected tokens per second, Cascade's
utility (Saxena et al. 2025): expected tokens per step from the live acceptance-by-position curve
(`zdiff.autotune.cost.expected_tokens` over the offset chain truncated at d, `truncated_outcomes`) over the
roofline floor of the step (`zdiff.autotune.cost.step_forward`: 1 + d verify rows, P * b mask rows, the
experts the budget lets them read). AR whenever nothing beats it.

The curve: per slot k of a block (1..b-1), how often a draft offered there was accepted (given the drafts
before it were), counted separately for steps with the budget on and off (the budget changes q, so it may
change acceptance), and blended with a prior of PRIOR_STEPS observations: the cost model's documented
default (`default_acceptance`) for the budget-off curve, the budget-off curve for the budget-on one. A step
that verifies only d drafts reports nothing about the slots past d, so a truncated verify length does not
bias the curve (a histogram of accepted counts would be censored at d).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..autotune.cost import (
    CostModel,
    default_acceptance,
    expected_tokens,
    offset_outcomes,
    step_forward,
    truncated_outcomes,
)
from ..autotune.targets import target_rates
from ..errors import ZdiffError
from ..spec import Spec

PRIOR_STEPS = 32  # weight of the prior acceptance curve, in observed drafts per slot
DECISION_INTERVAL = 8  # steps between decisions (the cost model is evaluated on the host)
CONTEXT_BUCKET = 256  # the floors are evaluated at the middle of a bucket of this many context tokens
MAX_CACHED_FLOORS = 4096
BUDGET_MODES = ("auto", "on", "off")  # a step's requests' wishes for the expert budget, "off" winning


@dataclass(frozen=True)
class StepOption:
    proposals: int  # P blocks at the spec's first P levels (those <= d are placed); 0: an AR step
    verify: int  # d: drafts verified per step (0 for AR)
    budget: int | None  # extra experts by router mass for the draft rows; None: no budget

    @property
    def label(self) -> str:
        return "ar" if not self.proposals else f"P{self.proposals}_d{self.verify}_m{_budget_text(self.budget)}"


def _budget_text(budget: int | None) -> str:
    return "off" if budget is None else str(budget)


def default_verify_lengths(block_size: int, auto: bool) -> tuple[int, ...]:
    """Every draft (b - 1) for a fixed P; with "auto" also 1, 3, 7, ... (one graph set per length)."""
    lengths = {block_size - 1}
    if auto:
        lengths |= {2**k - 1 for k in range(1, block_size.bit_length() + 1) if 2**k - 1 < block_size}
    return tuple(sorted(d for d in lengths if d >= 1))


def check_verify_lengths(lengths, block_size: int) -> tuple[int, ...]:
    if not isinstance(lengths, (tuple, list)) or not lengths or any(
            isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= block_size - 1 for d in lengths):
        raise ZdiffError(f"verify_lengths: must be a non-empty tuple of integers in 1..{block_size - 1} "
                         f"(block_size - 1), got {lengths!r}")
    return tuple(sorted(set(lengths)))


def check_budgets(budgets, moe: bool) -> tuple[int | None, ...]:
    if not isinstance(budgets, (tuple, list)) or not budgets or any(
            m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 0) for m in budgets):
        raise ZdiffError(f"expert_budgets: must be a non-empty tuple of None (off) and integers >= 0, got {budgets!r}")
    if not moe and any(m is not None for m in budgets):
        raise ZdiffError(f"expert_budgets: a dense model has no experts to budget, got {budgets!r}")
    return tuple(sorted(set(budgets), key=lambda m: -1 if m is None else m))


class ProposalPolicy:
    def __init__(self, spec: Spec, levels: tuple[int, ...], proposals: int | str, target: str,
                 verify_lengths=None, budgets=None):
        b = spec.diffusion.block_size
        self.block_size, self.levels = b, levels
        if proposals != "auto" and not (isinstance(proposals, int) and 0 <= proposals <= len(levels)):
            raise ZdiffError(f"proposals must be 'auto' or an integer in 0..{len(levels)} "
                             f"(diffusion.acceptance_levels has {len(levels)}), got {proposals!r}")
        self.fixed = None if proposals == "auto" else proposals
        self.spec, self.target = spec, target
        moe = spec.model.moe is not None
        auto = self.fixed is None
        if not levels or b < 2:
            self.verify_lengths, self.budgets = (), (None,)
        else:
            self.verify_lengths = check_verify_lengths(
                default_verify_lengths(b, auto) if verify_lengths is None else verify_lengths, b)
            self.budgets = check_budgets(((None, 0) if auto and moe else (None,)) if budgets is None else budgets, moe)
        self.options = self._options()
        self.accepted = [0] * b  # steps that accepted n drafts, n = 0..b-1
        # per slot k = 0..b-1 of a block (0 unused: slot 0 is the verified token), budget off / on
        self.offered = {False: [0] * b, True: [0] * b}
        self.accepted_at = {False: [0] * b, True: [0] * b}
        self.chosen: dict[StepOption, int] = {}
        self._model: CostModel | None = None
        self._floors: dict[tuple, float] = {}
        self._last: tuple[tuple, StepOption] | None = None
        self._steps_since = DECISION_INTERVAL

    def _options(self) -> list[StepOption]:
        """The (P, d, m) the engine captures; with "auto", P blocks only where the P-th level can be placed (<= d)."""
        counts = [self.fixed] if self.fixed is not None else range(len(self.levels) + 1)
        options = []
        for p in counts:
            if p == 0 or not self.verify_lengths:
                options.append(StepOption(0, 0, None))
                continue
            options += [StepOption(p, d, m) for d in self.verify_lengths for m in self.budgets
                        if self.fixed is not None or self.levels[p - 1] <= d]
        return options

    @property
    def max_verify(self) -> int:
        return max(self.verify_lengths, default=0)

    def observe(self, accepted_drafts: int, offered: int | None = None, offset: int = 0,
                budgeted: bool = False) -> None:
        """A step that verified `offered` drafts (default: the whole block) starting `offset` slots past the
        last token their block saw, and accepted `accepted_drafts` of them."""
        b = self.block_size
        self.accepted[min(accepted_drafts, b - 1)] += 1
        offered = b - 1 - offset if offered is None else offered
        for j in range(1, min(offered, accepted_drafts + 1) + 1):  # the slots past the first rejection: not reached
            slot = offset + j
            if slot >= b:
                break
            self.offered[budgeted][slot] += 1
            self.accepted_at[budgeted][slot] += j <= accepted_drafts

    def slot_rates(self, budgeted: bool = False) -> list[float]:
        """P(the draft at slot k is accepted | the drafts before it were), k = 1..b-1, blended with the prior."""
        if budgeted:
            prior = self.slot_rates(False)
        else:
            dist = default_acceptance(self.block_size)
            survive = [sum(dist[k:]) for k in range(self.block_size)]
            prior = [survive[k] / survive[k - 1] for k in range(1, self.block_size)]
        seen, hit = self.offered[budgeted], self.accepted_at[budgeted]
        return [(PRIOR_STEPS * prior[k - 1] + hit[k]) / (PRIOR_STEPS + seen[k]) for k in range(1, self.block_size)]

    def acceptance(self, budgeted: bool = False) -> list[float]:
        """The accepted-drafts distribution of an aligned block (index n: n drafts accepted) from the slot rates."""
        dist, survive = [], 1.0
        for rate in self.slot_rates(budgeted):
            dist.append(survive * (1 - rate))
            survive *= rate
        return dist + [survive]

    def allowed(self, max_verify: int | None = None, budget_mode: str = "auto") -> list[StepOption]:
        """The options a step may take: d <= max_verify (None: any), the budget as the requests allow."""
        keep = [o for o in self.options if o.proposals == 0 or (
            (max_verify is None or o.verify <= max_verify)
            and (budget_mode != "off" or o.budget is None) and (budget_mode != "on" or o.budget is not None))]
        return keep or self.options[:1]

    def choose(self, active_slots: int, mean_context: int, max_verify: int | None = None,
               budget_mode: str = "auto") -> StepOption:
        allowed = self.allowed(max_verify, budget_mode)
        key = (max(active_slots, 1), max_verify, budget_mode)
        if len(allowed) == 1:
            option = allowed[0]
        elif self._last is not None and self._last[0] == key and self._steps_since < DECISION_INTERVAL:
            option = self._last[1]
        else:
            option = self._decide(allowed, key[0], max(mean_context, 0))
            self._last, self._steps_since = (key, option), 0
        self._steps_since += 1
        self.chosen[option] = self.chosen.get(option, 0) + 1
        return option

    def utilities(self, options: list[StepOption], batch: int, context: int) -> list[float]:
        """Expected tokens per second of each option (Cascade's utility) at the floors."""
        if self._model is None:
            self._model = CostModel(self.spec, target_rates(self.target))
        curves = {budgeted: self.acceptance(budgeted) for budgeted in (False, True)}
        chains = {budgeted: offset_outcomes(curve) for budgeted, curve in curves.items()}
        outcomes, tokens = {}, {}
        rates = []
        for o in options:
            if o.proposals == 0:
                rates.append(1.0 / self._seconds(o, batch, context))
                continue
            budgeted = o.budget is not None
            placed = tuple(a for a in self.levels[: o.proposals] if a <= o.verify)
            if (budgeted, o.verify) not in outcomes:
                outcomes[budgeted, o.verify] = truncated_outcomes(chains[budgeted], o.verify)
            if (budgeted, o.verify, placed) not in tokens:
                tokens[budgeted, o.verify, placed] = expected_tokens(curves[budgeted], placed, self.block_size,
                                                                    outcomes[budgeted, o.verify])
            rates.append(tokens[budgeted, o.verify, placed] / self._seconds(o, batch, context))
        return rates

    def _seconds(self, option: StepOption, batch: int, context: int) -> float:
        """The option's floor, cached per batch and context bucket (the floor moves little within a bucket)."""
        bucket = context // CONTEXT_BUCKET * CONTEXT_BUCKET + CONTEXT_BUCKET // 2
        key = (option, batch, bucket)
        if key not in self._floors:
            if len(self._floors) > MAX_CACHED_FLOORS:
                self._floors.clear()
            self._floors[key] = (self._model.forward(batch, bucket, 0) if option.proposals == 0 else step_forward(
                self._model, batch, bucket, option.proposals, option.verify, option.budget)).seconds
        return self._floors[key]

    def _decide(self, allowed: list[StepOption], batch: int, context: int) -> StepOption:
        rates = self.utilities(allowed, batch, context)
        # ties (within rounding): fewer rows, then no budget
        best = max(range(len(allowed)), key=lambda i: (round(rates[i], 9), -allowed[i].proposals, -allowed[i].verify,
                                                       allowed[i].budget is None))
        return allowed[best]

    def report(self) -> dict:
        used: dict[int, int] = {}
        for option, steps in self.chosen.items():
            used[option.proposals] = used.get(option.proposals, 0) + steps
        return {"policy": "auto" if self.fixed is None else f"fixed {self.fixed}", "target": self.target,
                "proposals_used": dict(sorted(used.items())),
                "steps_used": [{"P": o.proposals, "verify": o.verify, "budget": o.budget, "steps": n}
                               for o, n in sorted(self.chosen.items(), key=lambda item: item[0].label)],
                "verify_lengths": list(self.verify_lengths), "expert_budgets": list(self.budgets),
                "accepted_drafts_histogram": list(self.accepted),
                "slot_acceptance": {"budget_off": self.slot_rates(False), "budget_on": self.slot_rates(True)}}
