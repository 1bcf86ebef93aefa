"""`zdiff.generate`: decode prompts on the engine (or the reference loop), return a GenerationResult.

The engine answers the same call the host-driven loop (`zdiff.generation.oracle.generate`, the oracle)
answers, so results and statistics compare one to one. Request i uses seed `seed + i`.
"""

from __future__ import annotations

import dataclasses
import time

from ..errors import ZdiffError
from ..sampler import SamplingParams
from ..spec import DiffusionSpec
from .engine import Engine
from .oracle import checked_prompts
from .oracle import generate as reference_loop
from .request_checks import is_integer
from .requests import MAX_SEED, RequestParams
from .result import GenerationResult


def generate(model, prompts, params: SamplingParams | None = None, *, loop: str = "engine", **kwargs):
    """Decode `prompts`: a text, a list of texts (needs the checkpoint's tokenizer) or a list of token-id lists.
    Defaults from `model.checkpoint` (zdiff.load_model): diffusion settings, spec, sampler, stop ids.
    loop="engine" (default): the decode engine (device-resident steps, continuous batching, graphs on a GPU),
    keyword arguments of `generate_on_engine`; loop="reference": the host-driven oracle
    (zdiff.generation.oracle.generate, which also takes verifier="fused")."""
    loops = {"engine": generate_on_engine, "reference": reference_loop}
    if loop not in loops:
        raise ZdiffError(f"loop must be engine or reference, got {loop!r}")
    context = getattr(model, "checkpoint", None)
    text = isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and any(isinstance(p, str) for p in prompts))
    if isinstance(prompts, str):
        prompts = [prompts]
    if text:
        if not all(isinstance(p, str) for p in prompts):
            raise ZdiffError("prompts: give all texts or all token-id lists, not a mix")
        if context is None or context.tokenizer is None:
            raise ZdiffError("text prompts need the checkpoint's tokenizer: load the model with zdiff.load_model"
                             + (f" ({context.tokenizer_error})" if context is not None else ""))
        prompts = [context.tokenizer.encode(p).tolist() for p in prompts]
    if context is not None:
        kwargs.setdefault("diffusion", context.spec.diffusion)
        kwargs.setdefault("stop_tokens", context.stop_tokens)
        if loop == "engine":
            kwargs.setdefault("spec", context.spec)
        if params is None:
            params = SamplingParams.from_spec(context.spec.sampler)
    result = loops[loop](model, prompts, params or SamplingParams(), **kwargs)
    if text:
        result = dataclasses.replace(result, texts=[context.tokenizer.decode(t) for t in result.tokens])
    return result

MAX_DEFAULT_SLOTS = 64


def generate_on_engine(model, prompts: list[list[int]], params: SamplingParams = SamplingParams(), *,
                       diffusion: DiffusionSpec | None = None, mode: str = "tidar", max_new_tokens: int = 64,
                       stop_tokens: tuple[int, ...] = (), seed: int = 0, proposals: int | str = "auto",
                       max_slots: int | None = None, spec=None, target: str | None = None,
                       verifier: str | None = None, progress=None, verify_lengths=None, expert_budgets=None,
                       verify_length: int = 0, expert_budget: str = "auto") -> GenerationResult:
    """Every prompt as one request of a fresh engine with min(len(prompts), 64) slots (continuous
    batching refills them); `progress(tokens so far)` after each step. verifier: "fused" | "torch"
    (default: fused on a GPU, torch on the CPU). verify_lengths / expert_budgets: the engine's captured
    options; verify_length / expert_budget: every request's (RequestParams)."""
    prompts = checked_prompts(prompts, model.spec.vocab_size)
    if not is_integer(max_new_tokens) or max_new_tokens < 1:
        raise ZdiffError(f"max_new_tokens: must be a positive integer, got {max_new_tokens!r}")
    if is_integer(seed) and 0 <= seed <= MAX_SEED < seed + len(prompts) - 1:
        raise ZdiffError(f"seed: prompt i uses seed + i, and seed {seed} + {len(prompts) - 1} is past the largest "
                         f"seed 2^63 - 1; use a seed <= {MAX_SEED - len(prompts) + 1}")
    longest = max((len(p) for p in prompts), default=1)
    if max_slots is None:
        max_slots = min(len(prompts), MAX_DEFAULT_SLOTS)
    engine = Engine(model, diffusion=diffusion, spec=spec, max_slots=max_slots,
                    max_len=longest + max_new_tokens, proposals=proposals, target=target, verifier=verifier,
                    verify_lengths=verify_lengths, expert_budgets=expert_budgets)
    request = dict(max_new_tokens=max_new_tokens, mode=mode, sampler=params.sampler, temperature=params.temperature,
                   top_k=params.top_k, top_p=params.top_p, mix_weight=params.mix_weight, stop_tokens=tuple(stop_tokens),
                   verify_length=verify_length, expert_budget=expert_budget)
    ids = [engine.add(p, RequestParams(seed=seed + i, **request)) for i, p in enumerate(prompts)]
    start = time.perf_counter()
    results = engine.run(progress=progress)
    seconds = time.perf_counter() - start
    done = [results[i] for i in ids]
    b = diffusion.block_size if diffusion is not None else 1
    # the result's forward_passes count each request's decode steps (T/NFE's denominator); the engine batches
    # requests into one forward and also runs prefill chunks, so its counts are named apart
    stats = {"decode_steps": engine.stats.steps, "prefill_forwards": engine.stats.forward_passes - engine.stats.steps,
             "batch_forwards": engine.stats.forward_passes,
             "graph_replays": engine.stats.graph_replays, "host_seconds": engine.stats.host_seconds,
             **engine.policy.report()}
    return GenerationResult([r.tokens for r in done], [r.accepted for r in done], [r.forward_passes for r in done],
                            seconds, mode, b, engine=stats)
