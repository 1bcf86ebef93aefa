"""`zdiff.generate`: decode a list of token-id prompts on the engine, return a GenerationResult.

The same call the host-driven loop (`zdiff.generation.loop.generate`, the oracle) answers, so
results and statistics compare one to one. Request i uses seed `seed + i`.
"""

from __future__ import annotations

import time

from ..errors import ZdiffError
from ..spec import DiffusionSpec
from .engine import MAX_SEED, Engine, RequestParams
from .loop import GenerationResult, checked_prompts
from .request_checks import is_integer
from .sampling import SamplingParams

MAX_DEFAULT_SLOTS = 64


def generate_on_engine(model, prompts: list[list[int]], params: SamplingParams = SamplingParams(), *,
                       diffusion: DiffusionSpec | None = None, mode: str = "tidar", max_new_tokens: int = 64,
                       stop_tokens: tuple[int, ...] = (), seed: int = 0, proposals: int | str = "auto",
                       max_slots: int | None = None, spec=None, target: str | None = None,
                       verifier: str | None = None, progress=None) -> GenerationResult:
    """Every prompt as one request of a fresh engine with min(len(prompts), 64) slots (continuous
    batching refills them); `progress(tokens so far)` after each step. verifier: "fused" | "torch"
    (default: fused on a GPU, torch on the CPU)."""
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
                    max_len=longest + max_new_tokens, proposals=proposals, target=target, verifier=verifier)
    request = dict(max_new_tokens=max_new_tokens, mode=mode, sampler=params.kind, temperature=params.temperature,
                   top_k=params.top_k, top_p=params.top_p, mix_weight=params.mix_weight, stop_tokens=tuple(stop_tokens))
    ids = [engine.add(p, RequestParams(seed=seed + i, **request)) for i, p in enumerate(prompts)]
    start = time.perf_counter()
    results = engine.run(progress=progress)
    seconds = time.perf_counter() - start
    done = [results[i] for i in ids]
    b = diffusion.block_size if diffusion is not None else 1
    stats = {"steps": engine.stats.steps, "forward_passes": engine.stats.forward_passes,
             "graph_replays": engine.stats.graph_replays, "host_seconds": engine.stats.host_seconds,
             **engine.policy.report()}
    return GenerationResult([r.tokens for r in done], [r.accepted for r in done], [r.forward_passes for r in done],
                            seconds, mode, b, engine=stats)
