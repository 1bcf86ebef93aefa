"""The sympy cost model: FLOPs and bytes of each part of one forward, roofline floors, and
how many TiDAR proposal blocks per pass a target can afford (`zdiff cost`).

Symbols: B sequences per batch, L cached context tokens per sequence, R new rows per
sequence in the forward (1 for an AR step; b verify rows + P*b proposal rows for a TiDAR
step with P proposals), T = B*R rows in all, R_head the rows per sequence the LM head runs on
(1 for AR; 2b - 1 for TiDAR: the b verify rows and the chosen block's b - 1 draft rows, what the
decode step computes: `decode_step._logits`). Model dimensions are symbols too (H, V, layers,
heads, ...), substituted from the spec by `dimensions(spec)`; the parameter counts of the
attention projections, router and norms come from `zdiff.spec.counts` (tested against the
instantiated model), so the two never disagree.

What a part costs (weights read once per forward, bf16 unless told otherwise):
- embedding: gathers T rows of H;
- attention projections (q, k, v halves, o; QK-norm temperatures): 2 FLOP per weight per row;
- CCA convs (depthwise + grouped, kernel taps x channels): 2 FLOP per weight per row, plus the
  per-sequence conv/value state;
- attention over the context: every row against L + R keys (the dense [cache | new rows]
  tile range a kernel walks; the pattern hides part of the new-row block, which is at most
  R/(L+R) of the work), 4 * heads * head_dim FLOP per (row, key) per layer; bytes: the K/V
  cache of B*L tokens read once plus the new rows' K/V written;
- router: 2 FLOP per router weight per row;
- experts: 2 FLOP per weight of the top_k chosen experts per row; bytes: the weights of the
  expected number of *distinct* experts the T rows touch, E*(1-(1-k/E)^T) for uniform routing
  (the skip expert, when there is one, is counted as a real expert: an upper bound), or
  sum_e 1-(1-k*p_e)^T for a measured routing histogram p (its last entry may be the skip
  expert, which costs nothing);
- dense MLP (Llama / Qwen dense specs, instead of router and experts): 2 FLOP per weight per row, and
  every one of its 3*I*H weights per layer read by every forward: an AR step already pays the whole
  read, so extra proposal rows cost nothing until the forward turns compute bound (TiDAR's
  "nearly free" regime, unlike the MoE case where more rows touch more distinct experts);
- LM head (tied or not): 2*V*H FLOP per row it runs on (B*R_head, not T), V*H weights;
- norms and residual scales: 4*H FLOP per row per norm, their weights.
Activations between kernels are not counted (they stay in cache or are fused); the floor
is "weights + KV read once", as in ../shared/DESIGN.md's yardsticks.

The forward's floor is the sum over parts of max(bytes / bandwidth, FLOPs / matmul rate):
kernels run one after another, so one part's spare compute cannot hide another's traffic.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sympy as sp

from ..errors import ZdiffError
from ..spec import Spec, count_model
from .targets import TargetRates

# shape symbols
B, L, R, R_HEAD = sp.symbols("B L R R_head", positive=True, integer=True)
T = B * R
# model-dimension symbols
H, V, NL, NQ, DH, E, K, I, DT = sp.symbols("H V N_layers n_q d_head E k I_ffn dtype_bytes", positive=True, integer=True)
W_PROJ, W_CCA, W_ROUTER, W_NORMS = sp.symbols("W_proj W_cca W_router W_norms", nonnegative=True, integer=True)
KV_TOKEN, CCA_STATE = sp.symbols("kv_bytes_per_token cca_state_bytes", nonnegative=True, integer=True)
N_NORMS = sp.Symbol("n_norms", positive=True, integer=True)
DISTINCT = sp.Symbol("D_experts", positive=True)  # expected distinct experts touched (per layer)

PARTS = ("embedding", "attn_proj", "cca_conv", "attention", "router", "experts", "mlp", "lm_head", "norms")


def uniform_distinct_experts(tokens=T):
    """E*(1-(1-k/E)^tokens): expected distinct experts that `tokens` top-k rows touch, uniform routing."""
    return E * (1 - (1 - K / E) ** tokens)


def histogram_distinct_experts(probabilities: list[float], top_k: int, num_experts: int, tokens=T):
    """sum_e 1-(1-k*p_e)^tokens over the real experts of a routing histogram (normalised to sum 1).

    With num_experts + 1 entries the last one is the skip expert (no weights to read)."""
    total = float(sum(probabilities))
    if len(probabilities) not in (num_experts, num_experts + 1) or total <= 0 or min(probabilities) < 0:
        raise ZdiffError(f"routing histogram must have {num_experts} (or {num_experts + 1} with the skip expert) "
                         f"non-negative entries with a positive sum, got {probabilities}")
    terms = []
    for p in probabilities[:num_experts]:
        share = sp.nsimplify(min(1.0, top_k * p / total))
        terms.append(1 - (1 - share) ** tokens)
    return sp.Add(*terms)


def part_costs(distinct=DISTINCT) -> dict[str, tuple[sp.Expr, sp.Expr]]:
    """{part: (FLOPs, bytes)} of one forward as sympy expressions in B, L, R and the dimension symbols."""
    return {
        "embedding": (sp.Integer(0), T * H * DT),
        "attn_proj": (2 * W_PROJ * T, W_PROJ * DT),
        "cca_conv": (2 * W_CCA * T, W_CCA * DT + B * CCA_STATE),
        "attention": (4 * NL * NQ * DH * (L + R) * T, B * L * KV_TOKEN + T * KV_TOKEN),
        "router": (2 * W_ROUTER * T, W_ROUTER * DT),
        "experts": (2 * K * NL * 3 * I * H * T, distinct * NL * 3 * I * H * DT),
        "mlp": (2 * NL * 3 * I * H * T, NL * 3 * I * H * DT),
        "lm_head": (2 * V * H * B * R_HEAD, V * H * DT),
        "norms": (4 * H * N_NORMS * T, W_NORMS * DT),
    }


def cca_conv_params(spec: Spec) -> int:
    """Weights + biases of the two CCA convs over all layers (0 for plain GQA)."""
    a = spec.model.attention
    if a.kind != "ccgqa":
        return 0
    channels = (a.num_heads + a.num_kv_heads) * a.head_dim
    per_layer = channels * a.cca.depthwise_kernel + channels + channels * a.head_dim * a.cca.grouped_kernel + channels
    return spec.model.num_layers * per_layer


def dimensions(spec: Spec, dtype_bytes: int = 2) -> dict:
    """Values of the dimension symbols for a spec (counts from zdiff.spec.counts)."""
    m = spec.model
    c = count_model(m, dtype_bytes=dtype_bytes)
    conv = cca_conv_params(spec)
    experts, top_k = (1, 1) if m.dense else (m.moe.num_experts, m.moe.top_k)  # dense: unused by its parts
    return {
        H: m.hidden_size, V: m.vocab_size, NL: m.num_layers, NQ: m.attention.num_heads, DH: m.attention.head_dim,
        E: experts, K: top_k, I: m.ffn_size, DT: dtype_bytes,
        W_PROJ: c.attention_params - conv, W_CCA: conv, W_ROUTER: c.router_params, W_NORMS: c.other_params,
        KV_TOKEN: c.kv_bytes_per_token, CCA_STATE: c.cca_state_bytes_per_sequence,
        N_NORMS: 2 * m.num_layers + 1,
    }


def rows_per_sequence(block_size: int, proposals: int) -> int:
    """R: 1 for an AR step (P = 0); b verify rows + P*b proposal rows for TiDAR."""
    return 1 if proposals == 0 else block_size * (1 + proposals)


def head_rows_per_sequence(block_size: int, proposals: int) -> int:
    """R_head: the rows the LM head runs on, 1 for AR; the b verify rows and the chosen block's b - 1 draft rows
    for TiDAR (the unchosen blocks' logits are never needed)."""
    return 1 if proposals == 0 else 2 * block_size - 1


@dataclass(frozen=True)
class PartCost:
    flops: float
    bytes: float
    seconds: float
    bound: str  # "memory" | "compute"


@dataclass(frozen=True)
class ForwardCost:
    proposals: int
    rows: int  # R
    parts: dict  # part -> PartCost
    distinct_experts: float

    @property
    def flops(self) -> float:
        return sum(p.flops for p in self.parts.values())

    @property
    def bytes(self) -> float:
        return sum(p.bytes for p in self.parts.values())

    @property
    def seconds(self) -> float:
        """Roofline floor: sum over parts of max(memory time, compute time)."""
        return sum(p.seconds for p in self.parts.values())

    @property
    def bound(self) -> str:
        memory = sum(p.seconds for p in self.parts.values() if p.bound == "memory")
        return "memory" if memory >= self.seconds / 2 else "compute"


class CostModel:
    """A spec's forward cost on one target; `forward(batch, context, proposals)` evaluates it."""

    def __init__(self, spec: Spec, rates: TargetRates, routing: list[float] | None = None, dtype_bytes: int = 2):
        self.spec, self.rates = spec, rates
        moe = spec.model.moe
        if moe is None:
            if routing is not None:
                raise ZdiffError(f"a routing histogram is for mixture-of-experts specs; {spec.name} is dense")
            distinct = sp.Integer(0)
        else:
            distinct = (uniform_distinct_experts() if routing is None
                        else histogram_distinct_experts(routing, moe.top_k, moe.num_experts))
        dims = dimensions(spec, dtype_bytes)
        self.distinct = distinct.subs(dims)
        parts = part_costs(self.distinct)
        unused = ("router", "experts") if moe is None else ("mlp",)
        if spec.model.attention.kind != "ccgqa":
            unused += ("cca_conv",)
        for name in unused:
            parts.pop(name)
        self.expressions = {name: (f.subs(dims), b.subs(dims)) for name, (f, b) in parts.items()}
        shape = (B, L, R, R_HEAD)
        self._numeric = {name: (sp.lambdify(shape, f, "math"), sp.lambdify(shape, b, "math"))
                         for name, (f, b) in self.expressions.items()}
        self._distinct = sp.lambdify((B, R), self.distinct, "math")

    def forward(self, batch: int, context: int, proposals: int) -> ForwardCost:
        b = self.spec.diffusion.block_size
        return self.forward_rows(batch, context, proposals, rows_per_sequence(b, proposals),
                                 head_rows_per_sequence(b, proposals))

    def forward_rows(self, batch: int, context: int, proposals: int, rows: int, head_rows: int) -> ForwardCost:
        """The forward with `rows` new rows per sequence (a TiDAR step verifying fewer drafts has fewer), the LM
        head on `head_rows` of them."""
        parts = {}
        for name, (flops_fn, bytes_fn) in self._numeric.items():
            args = (batch, context, rows, head_rows)
            flops, nbytes = float(flops_fn(*args)), float(bytes_fn(*args))
            t_mem, t_cmp = nbytes / self.rates.bytes_per_s, flops / self.rates.flops_per_s
            parts[name] = PartCost(flops, nbytes, max(t_mem, t_cmp), "memory" if t_mem >= t_cmp else "compute")
        return ForwardCost(proposals, rows, parts, float(self._distinct(batch, rows)))


# ---- acceptance: expected tokens per forward for a set of proposal levels -------------------------

DEFAULT_FIRST_RATE, DEFAULT_DECAY = 0.9, 0.95


def default_acceptance(block_size: int, first: float = DEFAULT_FIRST_RATE, decay: float = DEFAULT_DECAY) -> list[float]:
    """The assumed distribution of accepted drafts per step when none is measured.

    A draft j slots past the last token its block saw is accepted (given all before it were)
    with probability first * decay^(j-1): 0.9 for the first draft, 5% less per slot. With b = 16
    that is 4.77 tokens per forward when every level is proposed, near Zyphra's 4.6x lossless
    figure. Pass a measured histogram (`--acceptance`) to replace it."""
    survive, accept = 1.0, []
    for j in range(1, block_size):
        rate = first * decay ** (j - 1)
        accept.append(survive * (1 - rate))
        survive *= rate
    return accept + [survive]


def read_json(path: str | Path, flag: str):
    """The JSON a command-line flag names; a missing or unreadable file is one clear ZdiffError."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ZdiffError(f"{flag}: no such file {path}") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ZdiffError(f"{flag}: {path} is not readable JSON ({err.__class__.__name__})") from None


def load_acceptance(path: str | Path, block_size: int) -> list[float]:
    """Accepted-drafts distribution from a JSON file: a list of counts (index n = n accepted drafts,
    i.e. n+1 tokens committed), an object with "tokens_per_step_histogram", or `zdiff generate
    --json` output (its first TiDAR run)."""
    data = read_json(path, "--acceptance")
    if isinstance(data, dict) and "runs" in data:
        runs = [r for r in data["runs"].values() if isinstance(r, dict) and r.get("mode") != "ar"]
        data = runs[0] if runs else {}
    if isinstance(data, dict):
        data = data.get("tokens_per_step_histogram")
    counts = isinstance(data, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in data)
    if not counts or not data or not all(x >= 0 for x in data) or not 0 < sum(data) < math.inf:
        raise ZdiffError(f"--acceptance: {path} must hold a non-empty list of finite, non-negative counts "
                         "(or zdiff generate --json output with tokens_per_step_histogram)")
    if len(data) > block_size:
        raise ZdiffError(f"--acceptance: the histogram has {len(data)} entries, more than block_size "
                         f"({block_size}) levels 0..{block_size - 1}")
    data = list(data) + [0] * (block_size - len(data))
    total = float(sum(data))
    return [x / total for x in data]


def offset_outcomes(accept: list[float]) -> np.ndarray:
    """outcomes[d, k]: probability of accepting k drafts when the drafts on offer start d slots
    past the last token their block saw (d = 0: an aligned block, b-1 drafts; d > 0: b-1-d drafts).

    `accept[n]` (n = 0..b-1) is the aligned distribution. Acceptance is read as a per-slot rate
    that depends on the distance from the block's last seen token, so the misaligned case is
    the aligned one conditioned on reaching slot d: P(k | d) = accept[d+k] / sum_{n>=d} accept[n]
    (k = b-1-d means every offered draft was accepted). A slot never reached accepts nothing."""
    b = len(accept)
    outcomes = np.zeros((b, b))
    for d in range(b):
        survive = sum(accept[d:])
        if survive <= 0:
            outcomes[d, 0] = 1.0
            continue
        for k in range(b - d):
            outcomes[d, k] = accept[d + k] / survive
    return outcomes


def expected_tokens(accept: list[float], levels: tuple[int, ...], block_size: int,
                    outcomes: np.ndarray | None = None) -> float:
    """Tokens committed per forward in the long run, with proposal blocks at `levels`.

    After accepting k drafts the next drafts come from the block at the largest level a <= k,
    slots k-a+1..b-1 (generate/loop.py), i.e. at offset k-a. That is a Markov chain over the
    offset (`offset_outcomes`); the answer is its stationary mean of k+1. Every level proposed
    gives sum_n (n+1)*accept[n]; no levels (P = 0, AR) gives 1."""
    if not levels:
        return 1.0
    if len(accept) != block_size:
        raise ValueError(f"accept has {len(accept)} entries, block_size is {block_size}")
    outcomes = offset_outcomes(accept) if outcomes is None else outcomes
    gain = outcomes @ (np.arange(block_size) + 1.0)
    return float(_stationary_offsets(outcomes, levels) @ gain)


def _stationary_offsets(outcomes: np.ndarray, levels: tuple[int, ...]) -> np.ndarray:
    """Long-run share of decode steps whose drafts sit at each offset d (the chain of `expected_tokens`)."""
    b = len(outcomes)
    floor = np.array([max(a for a in levels if a <= k) for k in range(b)])
    jump = np.zeros((b, b))
    jump[np.arange(b), np.arange(b) - floor] = 1.0
    move = outcomes @ jump  # offset d -> offset d'
    system = np.vstack([move.T - np.eye(b), np.ones(b)])
    rhs = np.zeros(b + 1)
    rhs[-1] = 1.0
    return np.linalg.lstsq(system, rhs, rcond=None)[0]


def geometric_acceptance(rate: float, block_size: int) -> list[float]:
    """The aligned accepted-count distribution when each draft is accepted with probability `rate`,
    independently: P(n) = rate^n (1 - rate) for n < b-1, and rate^(b-1) for all b-1 drafts."""
    m = block_size - 1
    return [rate ** n * (1 - rate) for n in range(m)] + [rate ** m]


def draft_slot_weights(levels: tuple[int, ...], block_size: int, rate: float) -> list[float]:
    """How often decoding judges the draft of each slot of a proposal block, per step, in the long run:
    the weight of slot s in the training loss (spec `diffusion.loss.draft_acceptance`).

    Each draft is accepted with probability `rate`. At offset d the drafts on offer are slots d+1..b-1, and
    the one in slot s is judged when the s-d-1 drafts before it were all accepted; the offset follows the
    chain of `expected_tokens` (the next block is the one at the largest level <= accepted). Slot 0 is
    never a draft: it sits where the verifier samples its own token. Normalised to mean 1 over the b slots,
    so that uniform weights would be all ones."""
    outcomes = offset_outcomes(geometric_acceptance(rate, block_size))
    at_offset = _stationary_offsets(outcomes, levels).clip(min=0)
    judged = np.array([[rate ** (s - d - 1) if s > d else 0.0 for s in range(block_size)]
                       for d in range(block_size)])
    weights = at_offset @ judged
    return (weights * block_size / weights.sum()).tolist()


EXHAUSTIVE_LIMIT = 1500  # level sets tried exhaustively per P; beyond, grow the best set greedily


def best_levels(accept: list[float], proposals: int, block_size: int,
                start: tuple[int, ...] | None = None) -> tuple[tuple[int, ...], float]:
    """The P acceptance levels (0 always among them) that maximise expected tokens per forward."""
    if proposals == 0:
        return (), 1.0
    candidates = range(1, block_size)
    outcomes = offset_outcomes(accept)
    if math.comb(block_size - 1, proposals - 1) <= EXHAUSTIVE_LIMIT or start is None:
        sets = ((0, *rest) for rest in itertools.combinations(candidates, proposals - 1))
    else:
        sets = (tuple(sorted((*start, a))) for a in candidates if a not in start)
    scored = [(expected_tokens(accept, s, block_size, outcomes), s) for s in sets]
    tokens, best = max(scored, key=lambda item: (round(item[0], 12), [-a for a in item[1]]))
    return best, tokens


# ---- the table `zdiff cost` prints ---------------------------------------------------------------

@dataclass(frozen=True)
class ProposalRow:
    proposals: int
    levels: tuple[int, ...]
    cost: ForwardCost
    ratio_to_ar: float
    tokens_per_forward: float
    speedup: float  # tokens/s over AR at the roofline floors


def proposal_table(model: CostModel, batch: int, context: int, accept: list[float],
                   max_proposals: int) -> list[ProposalRow]:
    b = model.spec.diffusion.block_size
    ar = model.forward(batch, context, 0)
    rows, levels = [], None
    for p in range(0, min(max_proposals, b) + 1):
        levels, tokens = best_levels(accept, p, b, start=levels)
        cost = ar if p == 0 else model.forward(batch, context, p)
        ratio = cost.seconds / ar.seconds
        rows.append(ProposalRow(p, levels, cost, ratio, tokens, tokens / ratio))
    return rows


def recommend(rows: list[ProposalRow], tolerance: float = 0.01) -> ProposalRow:
    """The smallest P within `tolerance` of the best tokens/s speedup (fewer rows, same gain)."""
    top = max(r.speedup for r in rows)
    return next(r for r in rows if r.speedup >= top * (1 - tolerance))


def cost_report(spec: Spec, rates: TargetRates, batch: int, context: int, accept: list[float],
                max_proposals: int = 8, routing: list[float] | None = None, acceptance_source: str = "") -> dict:
    if batch < 1:
        raise ZdiffError(f"--batch must be at least 1, got {batch}")
    if context < 0:
        raise ZdiffError(f"--context must not be negative, got {context}")
    if max_proposals < 0:
        raise ZdiffError(f"--max-proposals must not be negative, got {max_proposals}")
    model = CostModel(spec, rates, routing=routing)
    rows = proposal_table(model, batch, context, accept, max_proposals)
    best = recommend(rows)
    return {
        "spec": spec.name, "target": rates.name, "batch": batch, "context": context,
        "block_size": spec.diffusion.block_size, "moe": spec.model.moe is not None,
        "rates": {"tflops": rates.flops_per_s / 1e12, "tbps": rates.bytes_per_s / 1e12, "source": rates.rates_source,
                  "ridge_flop_per_byte": rates.ridge},
        "acceptance": {"source": acceptance_source, "accepted_drafts_distribution": accept,
                       "tokens_per_forward_all_levels": sum((n + 1) * p for n, p in enumerate(accept))},
        "proposals": [{
            "P": r.proposals, "rows_per_sequence": r.cost.rows, "levels": list(r.levels),
            "floor_ms": r.cost.seconds * 1e3, "bound": r.cost.bound, "gbytes": r.cost.bytes / 1e9,
            "tflop": r.cost.flops / 1e12, "distinct_experts": r.cost.distinct_experts,
            "ratio_to_ar": r.ratio_to_ar, "tokens_per_forward": r.tokens_per_forward, "speedup": r.speedup,
            "parts": {name: {"gflop": pc.flops / 1e9, "mbytes": pc.bytes / 1e6, "ms": pc.seconds * 1e3,
                             "bound": pc.bound} for name, pc in r.cost.parts.items()},
        } for r in rows],
        "recommended": {"P": best.proposals, "levels": list(best.levels), "speedup": best.speedup},
        # the levels above are the cost model's best for the acceptance; the engine runs the spec's first P
        "spec_levels": list(spec.diffusion.acceptance_levels or ()),
        # the proposals a pass affords before it turns compute bound (Zyphra's "proposals per pass")
        "memory_bound_up_to": max(r.proposals for r in rows if r.cost.bound == "memory"),
    }


def format_cost_report(report: dict) -> str:
    r = report["rates"]
    a = report["acceptance"]
    lines = [
        f"{report['spec']} on {report['target']}: batch {report['batch']}, context {report['context']}, "
        f"block {report['block_size']}; {r['tflops']:.0f} TFLOP/s, {r['tbps']:.2f} TB/s ({r['source']}), "
        f"ridge {r['ridge_flop_per_byte']:.0f} FLOP/B",
        f"acceptance: {a['source']} ({a['tokens_per_forward_all_levels']:.2f} tokens/forward with every level "
        "proposed)",
        f"{'P':>2} {'rows':>5} {'levels':<22} {'floor ms':>9} {'bound':>8} {'GB':>7} {'TFLOP':>7} {'experts':>7} "
        f"{'x AR':>6} {'tok/fwd':>7} {'speedup':>7}",
    ]
    for p in report["proposals"]:
        levels = ",".join(map(str, p["levels"])) if p["P"] else "(AR step)"
        experts = f"{p['distinct_experts']:>7.2f}" if report["moe"] else f"{'dense':>7}"
        lines.append(f"{p['P']:>2} {p['rows_per_sequence']:>5} {levels:<22} {p['floor_ms']:>9.3f} {p['bound']:>8} "
                     f"{p['gbytes']:>7.2f} {p['tflop']:>7.3f} {experts} {p['ratio_to_ar']:>6.2f} "
                     f"{p['tokens_per_forward']:>7.2f} {p['speedup']:>6.2f}x")
    best = report["recommended"]
    if best["P"] == 0:
        lines.append(f"recommended on {report['target']}: AR decoding (P = 0); no proposal count beats it at the "
                     "roofline floors for this batch and acceptance")
    else:
        lines.append(f"recommended on {report['target']}: P = {best['P']} proposals at acceptance levels "
                     f"{best['levels']} ({best['speedup']:.2f}x AR tokens/s at the floors)")
    lines.append(f"the forward stays memory bound up to P = {report['memory_bound_up_to']} proposals per pass")
    spec_levels = report["spec_levels"]
    if any(p["levels"] != spec_levels[:p["P"]] for p in report["proposals"]):
        lines.append(f"levels: chosen by the cost model to maximise tokens per forward for this acceptance; the spec "
                     f"lists {spec_levels} and the engine runs its first P (set diffusion.acceptance_levels to use "
                     "these)")
    return "\n".join(lines)


# ---- MoE-aware TiDAR: verify length d and the draft rows' expert budget ---------------------------------
#
# A step may verify d <= b-1 drafts (1 + d verify rows, the rest of the drafts dropped) and restrict the draft
# rows' routing to the experts its verify rows chose plus m more by router mass (zdiff.runtime.moe
# .ExpertRestriction; budget None: off). Both are lossless. With the budget the step reads the weights of
# min(E, D(B*(1+d)) + m) experts per layer instead of D(B*R): the draft rows add compute, not traffic.

BUDGET_CHOICES = (None, 0, 1, 2)  # no budget, then the verify rows' experts plus m = 0, 1, 2 by router mass
LEVEL_SETS_TRIED = 64  # level sets tried exhaustively per (d, P); beyond, the best P-1 set grows greedily


def truncated_outcomes(outcomes: np.ndarray, verify: int) -> np.ndarray:
    """`offset_outcomes` when at most `verify` drafts are verified per step: at offset o, n = min(verify,
    b-1-o) drafts are on offer and all n are accepted with the probability that n or more of the full offer
    would have been (whether a draft is accepted depends only on the drafts before it), so the chain stays
    exact. Rows past n are dropped (their KV is never written)."""
    b = outcomes.shape[0]
    cut = np.zeros_like(outcomes)
    for o in range(b):
        n = min(verify, b - 1 - o)
        cut[o, :n] = outcomes[o, :n]
        cut[o, n] = outcomes[o, n:].sum()
    return cut


def step_rows(block_size: int, proposals: int, verify: int) -> int:
    """R of a step: 1 for AR (P = 0); c and d drafts, then P proposal blocks of b masks."""
    return 1 if proposals == 0 else 1 + verify + proposals * block_size


def step_forward(model: CostModel, batch: int, context: int, proposals: int, verify: int,
                 budget: int | None) -> ForwardCost:
    """The floor of a step with verify length `verify` and draft expert budget `budget` (None: off)."""
    b = model.spec.diffusion.block_size
    rows = step_rows(b, proposals, verify)
    # the LM head runs on the 1 + d verify rows and the chosen block's b - 1 draft rows (1 row for AR)
    forward = model.forward_rows(batch, context, proposals, rows, 1 if proposals == 0 else 1 + verify + b - 1)
    if budget is None or proposals == 0 or "experts" not in forward.parts:  # a dense model has no experts
        return forward
    num_experts = model.spec.model.moe.num_experts
    distinct = min(float(num_experts), float(model._distinct(batch, 1 + verify)) + budget)
    part = forward.parts["experts"]
    nbytes = part.bytes * distinct / forward.distinct_experts
    t_mem, t_cmp = nbytes / model.rates.bytes_per_s, part.flops / model.rates.flops_per_s
    parts = {**forward.parts, "experts": PartCost(part.flops, nbytes, max(t_mem, t_cmp),
                                                  "memory" if t_mem >= t_cmp else "compute")}
    return ForwardCost(proposals, rows, parts, distinct)


def best_levels_within(accept: list[float], proposals: int, verify: int, outcomes: np.ndarray,
                       start: tuple[int, ...] | None = None) -> tuple[tuple[int, ...], float]:
    """The P levels in 0..verify (0 among them) maximising tokens per forward under `outcomes` (truncated)."""
    b = len(accept)
    candidates = range(1, verify + 1)
    if math.comb(verify, proposals - 1) <= LEVEL_SETS_TRIED or start is None:
        sets = ((0, *rest) for rest in itertools.combinations(candidates, proposals - 1))
    else:
        sets = (tuple(sorted((*start, a))) for a in candidates if a not in start)
    scored = [(expected_tokens(accept, s, b, outcomes), s) for s in sets]
    tokens, best = max(scored, key=lambda item: (round(item[0], 12), [-a for a in item[1]]))
    return best, tokens


@dataclass(frozen=True)
class StepChoice:
    proposals: int
    verify: int  # drafts verified per step (d)
    budget: int | None  # extra experts by router mass for the draft rows; None: no budget
    levels: tuple[int, ...]
    cost: ForwardCost
    ratio_to_ar: float
    tokens_per_forward: float
    speedup: float


def step_table(model: CostModel, batch: int, context: int, accept: list[float], max_proposals: int,
               budgets=BUDGET_CHOICES, budget_accept: list[float] | None = None) -> list[StepChoice]:
    """Every (P, d, budget) with its best levels; the first row is AR. `budget_accept`: the accepted-drafts
    distribution under a budget (default: the same as without; drafts trained for the budget keep it)."""
    b = model.spec.diffusion.block_size
    ar = model.forward(batch, context, 0)
    rows = [StepChoice(0, 0, None, (), ar, 1.0, 1.0, 1.0)]
    if "experts" not in ar.parts:
        budgets = (None,)  # nothing to budget on a dense model
    searched = {}
    for budget in budgets:
        acc = accept if budget is None or budget_accept is None else budget_accept
        for d in range(1, b):
            key, levels = (id(acc), d), None
            if key not in searched:
                outcomes = truncated_outcomes(offset_outcomes(acc), d)
                searched[key] = []
                for p in range(1, min(max_proposals, d + 1) + 1):
                    levels, tokens = best_levels_within(acc, p, d, outcomes, start=levels)
                    searched[key].append((p, levels, tokens))
            for p, levels, tokens in searched[key]:
                cost = step_forward(model, batch, context, p, d, budget)
                ratio = cost.seconds / ar.seconds
                rows.append(StepChoice(p, d, budget, levels, cost, ratio, tokens, tokens / ratio))
    return rows


def best_step(rows: list[StepChoice], tolerance: float = 0.01) -> StepChoice:
    """The cheapest step (fewest rows, then no budget) within `tolerance` of the best tokens/s speedup."""
    top = max(r.speedup for r in rows)
    near = [r for r in rows if r.speedup >= top * (1 - tolerance)]
    return min(near, key=lambda r: (r.cost.rows, r.budget is not None, r.budget or 0, -r.speedup))


def policy_choices(rows: list[StepChoice], block_size: int) -> dict[str, StepChoice]:
    """The best step of each policy: AR; TiDAR today (every draft verified, no budget); + choosing d;
    + the draft expert budget."""
    every_draft = [r for r in rows if r.proposals == 0 or (r.verify == block_size - 1 and r.budget is None)]
    searched = {"AR": rows[:1], "TiDAR today": every_draft,
                "TiDAR + d": [r for r in rows if r.budget is None],
                "TiDAR + d + budget": rows}
    choices, previous = {}, None
    for name, allowed in searched.items():
        choice = best_step(allowed)
        # each policy searches a superset of the one before: never report it slower (best_step's tolerance
        # trades up to 1% of speed for fewer rows, and that may land below the previous policy's pick)
        choices[name] = previous if previous is not None and choice.speedup < previous.speedup else choice
        previous = choices[name]
    return choices


def step_report(model: CostModel, batch: int, context: int, accept: list[float], max_proposals: int,
                budget_accept: list[float] | None = None) -> dict:
    """The best (P, d, budget) per policy, as `zdiff cost` prints and --json returns under "steps"."""
    rows = step_table(model, batch, context, accept, max_proposals, budget_accept=budget_accept)
    return {name: {"P": r.proposals, "verify": r.verify, "budget": r.budget, "levels": list(r.levels),
                   "rows_per_sequence": r.cost.rows, "distinct_experts": r.cost.distinct_experts,
                   "floor_ms": r.cost.seconds * 1e3, "gbytes": r.cost.bytes / 1e9,
                   "tokens_per_forward": r.tokens_per_forward, "speedup": r.speedup}
            for name, r in policy_choices(rows, model.spec.diffusion.block_size).items()}


def format_step_report(steps: dict) -> str:
    lines = ["verify length d and draft-row expert budget (m: the draft rows route among the verify rows' experts "
             "plus m; '-': no budget), best per policy:",
             f"{'policy':<20} {'P':>2} {'d':>3} {'m':>2} {'rows':>5} {'levels':<16} {'experts':>7} {'floor ms':>9} "
             f"{'tok/fwd':>7} {'speedup':>7}"]
    for name, r in steps.items():
        levels = ",".join(map(str, r["levels"])) if r["P"] else "(AR step)"
        budget = "-" if r["budget"] is None else str(r["budget"])
        lines.append(f"{name:<20} {r['P']:>2} {r['verify']:>3} {budget:>2} {r['rows_per_sequence']:>5} {levels:<16} "
                     f"{r['distinct_experts']:>7.2f} {r['floor_ms']:>9.3f} {r['tokens_per_forward']:>7.2f} "
                     f"{r['speedup']:>6.2f}x")
    return "\n".join(lines)
