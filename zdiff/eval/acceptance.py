"""Acceptance benchmark: how many tokens a checkpoint's drafts deliver per forward, with intervals.

For one checkpoint: held-out prompts decoded by the engine (`generation.api.generate_on_engine`)
with AR, TiDAR lossless, logit-mix at several weights and greedy; per sampler the tokens per decode
step (T/NFE), the acceptance rate by draft position and the accepted-length histogram, each with a
95% percentile-bootstrap interval over prompts (prompts are the independent unit: the steps of one
request are correlated); plus the held-out AR bits/byte. `benchmarks/acceptance_bench.py` is the CLI.

Acceptance at draft position j (1..b-1) is the share of decode steps that accepted at least j drafts
(the j-th draft is reached only when drafts 1..j-1 were accepted); `conditional` is that share
divided by the share at j-1. Both follow from the histogram; T/NFE = sum of tokens / sum of steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..checkpoint.context import CheckpointContext
from ..checkpoint.store import load_model
from ..checkpoint.tokenizer import checkpoint_tokenizer
from ..errors import SpecError, ZdiffError
from ..generation.api import generate_on_engine
from ..runtime.threads import fixed_threads
from ..sampler import SamplingParams
from ..spec import load_spec
from ..spec.validate import validate
from ..train.data import split_corpus
from ..train.evaluate import evaluate
from ..train.objective import Objective

BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class BenchPlan:
    prompts: int = 64
    prompt_tokens: int = 64
    new_tokens: int = 128
    mix_weights: tuple[float, ...] = (0.25, 0.5, 0.75)
    eval_windows: int = 64
    seq_len: int = 128
    seed: int = 0
    threads: int | None = None  # torch intra-op threads (zdiff.runtime.threads)
    # decode with these proposal levels instead of the checkpoint's (a decoding setting: the weights are the same)
    acceptance_levels: tuple[int, ...] | None = None

    def check(self) -> None:
        for name in ("prompts", "prompt_tokens", "new_tokens", "eval_windows", "seq_len"):
            if getattr(self, name) < 1:
                raise ZdiffError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for w in self.mix_weights:
            if not 0.0 <= w <= 1.0:
                raise ZdiffError(f"--mix-weights: each weight must be in [0, 1], got {w}")


def samplers(mix_weights) -> dict[str, tuple[str, SamplingParams]]:
    """name -> (mode, sampling parameters), in report order."""
    runs = {"ar": ("ar", SamplingParams(sampler="lossless")), "lossless": ("tidar", SamplingParams(sampler="lossless"))}
    for w in mix_weights:
        runs[f"logit_mix_{w:g}"] = ("tidar", SamplingParams(sampler="logit_mix", mix_weight=w))
    runs["greedy"] = ("tidar", SamplingParams(sampler="greedy"))
    return runs


def percentile_interval(samples: np.ndarray) -> np.ndarray:
    """(resamples, ...) bootstrap statistics -> (2, ...) lower and upper ends of the percentile interval."""
    tail = (1 - CONFIDENCE) / 2 * 100
    return np.percentile(samples, [tail, 100 - tail], axis=0)


def bootstrap_indices(count: int, seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> np.ndarray:
    """(resamples, count) prompt indices drawn with replacement, a pure function of the seed."""
    return np.random.default_rng([seed, count]).integers(0, count, size=(resamples, count))


def paired_difference(baseline: dict, other: dict, seed: int = 0) -> dict:
    """T/NFE of `other` minus `baseline` (two sampler reports on the same prompts, in the same order), with a
    95% interval from resampling the *same* prompts for both: far tighter than comparing two separate intervals,
    since most of the spread between prompts is shared."""
    a, b = baseline["requests"], other["requests"]
    if len(a) != len(b):
        raise ZdiffError(f"paired comparison needs the same prompts: {len(a)} and {len(b)} requests")
    tokens = np.array([[len(q["new_tokens"]) for q in a], [len(q["new_tokens"]) for q in b]], dtype=np.int64)
    steps = np.array([[q["decode_steps"] for q in a], [q["decode_steps"] for q in b]], dtype=np.int64)
    picks = bootstrap_indices(len(a), seed)
    ratio = tokens[:, picks].sum(-1) / np.maximum(steps[:, picks].sum(-1), 1)  # (2, resamples)
    point = tokens.sum(1) / np.maximum(steps.sum(1), 1)
    return {"difference": float(point[1] - point[0]), "ci95": percentile_interval(ratio[1] - ratio[0]).tolist()}


def request_counts(accepted: list[list[int]], block_size: int) -> np.ndarray:
    """(requests, block_size) counts: [r, n] = decode steps of request r that accepted n drafts."""
    counts = np.zeros((len(accepted), block_size), dtype=np.int64)
    for r, steps in enumerate(accepted):
        np.add.at(counts[r], np.asarray(steps, dtype=np.int64), 1)
    return counts


def acceptance_from_histogram(histogram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """histogram (..., b): steps per accepted-draft count -> (reach, conditional), each (..., b - 1) for positions
    1..b-1: reach[j-1] = P(accepted >= j), conditional[j-1] = P(accepted >= j | accepted >= j - 1)."""
    at_least = np.flip(np.cumsum(np.flip(histogram, -1), -1), -1).astype(np.float64)  # [n] = steps with >= n
    total = np.maximum(at_least[..., :1], 1)
    reach = at_least[..., 1:] / total
    conditional = at_least[..., 1:] / np.maximum(at_least[..., :-1], 1)
    return reach, conditional


def sampler_report(result, block_size: int, seed: int) -> dict:
    """One sampler's numbers, intervals by resampling prompts, and the per-request counts behind them."""
    tokens = np.array([len(t) for t in result.tokens], dtype=np.int64)
    steps = np.array(result.forward_passes, dtype=np.int64)
    counts = request_counts(result.accepted, block_size)
    picks = bootstrap_indices(len(tokens), seed)
    boot_tnfe = tokens[picks].sum(1) / np.maximum(steps[picks].sum(1), 1)
    histogram = counts.sum(0)
    reach, conditional = acceptance_from_histogram(histogram)
    boot_reach, _ = acceptance_from_histogram(counts[picks].sum(1))
    return {
        "mode": result.mode, "tokens": int(tokens.sum()), "decode_steps": int(steps.sum()),
        "tokens_per_forward": float(tokens.sum() / max(steps.sum(), 1)),
        "tokens_per_forward_ci95": percentile_interval(boot_tnfe).tolist(),
        "acceptance_by_position": reach.tolist(),
        "acceptance_by_position_ci95": percentile_interval(boot_reach).T.tolist(),
        "conditional_acceptance_by_position": conditional.tolist(),
        "accepted_length_histogram": histogram.tolist(),  # [n]: decode steps that accepted n drafts (n + 1 tokens)
        "seconds": result.seconds,
        "requests": [{"new_tokens": [int(t) for t in toks], "decode_steps": int(s), "accepted": list(map(int, acc))}
                     for toks, s, acc in zip(result.tokens, result.forward_passes, result.accepted)],
    }


def decode_all(model, spec, prompts: list[list[int]], plan: BenchPlan, stop_tokens, bar=None) -> dict:
    """Every sampler of the plan on the same prompts and seeds; name -> sampler_report. `bar`: a tqdm."""
    b = spec.diffusion.block_size
    reports = {}
    for name, (mode, params) in samplers(plan.mix_weights).items():
        base = bar.n if bar is not None else 0
        progress = None if bar is None else (lambda tokens, base=base: bar.update(base + tokens - bar.n))
        result = generate_on_engine(model, prompts, params, diffusion=spec.diffusion, mode=mode, spec=spec,
                                    max_new_tokens=plan.new_tokens, seed=plan.seed, stop_tokens=stop_tokens,
                                    proposals=spec.diffusion.proposals, progress=progress)
        reports[name] = {"sampler": params.sampler, "mix_weight": params.mix_weight if params.sampler == "logit_mix"
                         else None, **sampler_report(result, b if mode == "tidar" else 1, plan.seed)}
    return reports


def plan_dict(plan: BenchPlan) -> dict:
    """The plan as reported. acceptance_levels only when given, so reports of the checkpoint's own levels
    compare with those written before the option existed (recipe_study pairs rows whose plans are equal)."""
    levels = {} if plan.acceptance_levels is None else {"acceptance_levels": list(plan.acceptance_levels)}
    return {**{k: v for k, v in asdict(plan).items() if k != "acceptance_levels"}, **levels,
            "mix_weights": list(plan.mix_weights), "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
            "confidence": CONFIDENCE}


def with_levels(spec, levels: tuple[int, ...] | None):
    """`spec` decoding with proposal blocks at `levels` (checked like the spec field), or unchanged for None."""
    if levels is None:
        return spec
    diffusion = dataclasses.replace(spec.diffusion, proposals=len(levels), acceptance_levels=tuple(levels))
    try:
        return validate(dataclasses.replace(spec, diffusion=diffusion))
    except SpecError as exc:
        raise ZdiffError(f"--acceptance-levels {' '.join(map(str, levels))}: {exc}") from None


def heldout_prompts(data: str, tokenizer, plan: BenchPlan):
    """(held-out stream, prompts): `plan.prompts` evenly spaced held-out windows, file separators dropped."""
    heldout = split_corpus(data, tokenizer)[1]
    size = heldout.num_tokens if hasattr(heldout, "num_tokens") else len(heldout.tokens)  # shards / in-memory
    if size <= max(plan.prompt_tokens, plan.seq_len + 1):
        raise ZdiffError(f"--data {data}: the held-out split has {size} tokens, fewer than one "
                         f"prompt ({plan.prompt_tokens}) or evaluation window ({plan.seq_len + 1})")
    windows = heldout.windows(plan.prompt_tokens, plan.prompts).tolist()
    prompts = [[t for t in w if t != tokenizer.separator] or w[:1] for w in windows]
    return heldout, prompts


def run_benchmark(checkpoint, data: str = "stdlib", plan: BenchPlan = BenchPlan(), log=print) -> dict:
    """The whole benchmark on one checkpoint -> the report (JSON-ready)."""
    plan.check()
    directory = Path(checkpoint)
    with fixed_threads(plan.threads) as threads:
        model = load_model(directory).eval()
        spec = with_levels(load_spec(directory / "spec.yaml"), plan.acceptance_levels)
        if spec.diffusion.mask_token_id is None:
            raise ZdiffError(f"{directory}: an AR checkpoint (diffusion.mask_token_id is null) has no drafts to "
                             "measure; convert it first (zdiff train --mode tidar --init ...)")
        tokenizer = checkpoint_tokenizer(directory, spec.model.vocab_size)
        heldout, prompts = heldout_prompts(data, tokenizer, plan)
        quality = evaluate(model, heldout, Objective(spec, "ar", plan.seq_len), None, plan.seq_len, plan.eval_windows)
        log(f"[acceptance] {directory}: held-out AR {quality['heldout_ar_bits_per_byte']:.4f} bits/byte; decoding "
            f"{len(prompts)} prompts x {plan.new_tokens} tokens with {len(samplers(plan.mix_weights))} samplers")
        stop = CheckpointContext.of(directory, spec).stop_tokens
        total = len(prompts) * plan.new_tokens * len(samplers(plan.mix_weights))
        with tqdm(total=total, desc="acceptance", unit="tok", leave=False) as bar:
            reports = decode_all(model, spec, prompts, plan, stop, bar)
    return {"checkpoint": str(directory), "spec": spec.name, "spec_hash": spec.hash(), "data": data,
            "block_size": spec.diffusion.block_size, "proposals": spec.diffusion.proposals,
            "acceptance_levels": list(spec.diffusion.acceptance_levels), "threads": threads,
            "plan": plan_dict(plan), **quality, "samplers": reports}
