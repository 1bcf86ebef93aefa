"""Prefill, AR decoding and TiDAR decoding over a batch of ragged prompts.

One TiDAR step per forward pass: verify the pending token c and the drafts d_1..d_m
(causal rows), and draft the next block at each acceptance level a (bidirectional rows
that see the cache and verify rows 0..a). Each sequence accepts its own number of drafts;
its accepted rows are committed to the cache, the others are dropped, and its next drafts
come from the block at the largest level <= accepted count. AR decoding is the same step
with no drafts and no proposal blocks, so both loops share one code path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ...errors import ZdiffError
from ...pattern import BatchLayout, Pattern, causal_pattern, decode_pattern, prefill_pattern
from ...spec import DiffusionSpec
from ..request_checks import check_prompt_ids, check_sampling, effective_sampling, is_integer
from ..result import GenerationResult
from ..rules import delivered_tokens
from .decode_cache import DecodeCache
from .sampling import (
    SamplingParams,
    draw_gumbel,
    gumbel_argmax,
    probabilities,
    target_probs,
    verify_greedy,
    verify_stochastic,
)


def checked_prompts(prompts, vocab: int) -> list[list[int]]:
    """A non-empty list of non-empty token-id lists within the vocabulary, or one line naming the bad one."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (list, tuple)):
        raise ZdiffError(f"prompts: must be a list of token-id lists, got {type(prompts).__name__} {prompts!r:.80}")
    if not prompts:
        raise ZdiffError("prompts: needs at least one prompt (a list of token-id lists), got an empty list")
    return [check_prompt_ids(p, vocab, f"prompts[{i}]") for i, p in enumerate(prompts)]


@dataclass
class SequenceState:
    prompt: list[int]
    generated: list[int] = field(default_factory=list)
    pending: int = -1  # c: committed, not yet in the cache
    drafts: list[int] = field(default_factory=list)
    draft_q: torch.Tensor | None = None  # (m, V) distributions the drafts were sampled from
    draft_logits: torch.Tensor | None = None  # (m, V) raw draft logits (logit_mix)
    accepted: list[int] = field(default_factory=list)  # drafts accepted per decode step
    forward_passes: int = 0
    done: bool = False


class _Batch:
    """Stacks each sequence's rows (a pattern over its cached context plus new rows) into one pass."""

    def __init__(self, model, cache: DecodeCache, pad_id: int, block_size: int):
        self.model, self.cache, self.pad_id, self.block_size = model, cache, pad_id, block_size

    @torch.no_grad()
    def run(self, plans: list[tuple[list[int], Pattern] | None]) -> torch.Tensor:
        cache, device = self.cache, self.model.embed.weight.device
        B, rf, S = len(plans), cache.receptive_field, cache.max_len
        R = max(len(p[0]) for p in plans if p is not None)
        ids = torch.full((B, R), self.pad_id, dtype=torch.long)
        positions = torch.zeros(B, R, dtype=torch.long)
        preds = torch.full((B, rf + R), -1, dtype=torch.long)
        visible = torch.zeros(B, R, S + R, dtype=torch.bool)
        visible[:, torch.arange(R), S + torch.arange(R)] = True  # padding rows see themselves
        for b, plan in enumerate(plans):
            if plan is None:
                continue
            row_ids, pattern = plan
            C, n = cache.lengths[b], len(row_ids)
            assert pattern.query_start == C and pattern.num_rows == C + n
            ids[b, :n] = torch.tensor(row_ids)
            positions[b, :n] = pattern.positions()[C:]
            preds[b, :rf] = torch.tensor(cache.state_predecessors(b), dtype=torch.long)
            preds[b, rf:rf + n] = torch.tensor([cache.extended_index(b, int(p)) for p in pattern.predecessors()[C:]])
            mask = pattern.query_mask()  # (n, C + n)
            visible[b, :n, :C] = mask[:, :C]
            visible[b, :n, S:S + n] = mask[:, C:]
        layout = BatchLayout.of_patterns([None if p is None else p[1] for p in plans], self.block_size)
        return self.model(ids.to(device), positions=positions.to(device), predecessors=preds.to(device),
                          visible=visible.to(device), cache=cache, layout=layout)


def _sample(probs: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    if params.sampler == "greedy":
        return torch.argmax(probs, dim=-1)
    return gumbel_argmax(probs.cpu(), draw_gumbel(probs.shape, generator))


def generate(model, prompts: list[list[int]], params: SamplingParams = SamplingParams(), *,
             diffusion: DiffusionSpec | None = None, mode: str = "tidar", max_new_tokens: int = 64,
             stop_tokens: tuple[int, ...] = (), seed: int = 0, verifier: str = "reference",
             progress=None) -> GenerationResult:
    """Generate up to `max_new_tokens` per prompt (token ids in, token ids out).

    `diffusion` (block size, acceptance levels, mask token) is required for TiDAR decoding;
    `verifier`: "reference" (per-sequence torch code, the oracle) or "fused" (the engine's verifier API on
    its Triton kernels, one call per step, each sequence keyed on a seed from the loop's generator).
    `progress`, if given, is called with the running token count after every step.
    """
    if verifier not in ("reference", "fused"):
        raise ZdiffError(f"verifier must be reference or fused, got {verifier!r}")
    if mode not in ("ar", "tidar"):
        raise ZdiffError(f"mode must be ar or tidar, got {mode!r}")
    prompts = checked_prompts(prompts, model.spec.vocab_size)
    if not is_integer(max_new_tokens) or max_new_tokens < 1:
        raise ZdiffError(f"max_new_tokens: must be a positive integer, got {max_new_tokens!r}")
    if not is_integer(seed) or not 0 <= seed < 2**63:
        raise ZdiffError(f"seed: must be an integer in [0, 2^63), got {seed!r}")
    check_sampling(params.sampler, params.temperature, params.top_k, params.top_p, params.mix_weight)
    temperature, top_k, top_p = effective_sampling(params.temperature, params.top_k, params.top_p,
                                                   model.spec.vocab_size)
    if mode == "tidar" and (diffusion is None or diffusion.mask_token_id is None):
        raise ZdiffError("TiDAR decoding needs diffusion settings with a mask token (a converted checkpoint has them)")
    b = diffusion.block_size if diffusion is not None else 1
    levels = tuple(diffusion.acceptance_levels) if diffusion is not None else (0,)
    mask_id = diffusion.mask_token_id if diffusion is not None else None
    banned = tuple(sorted(set(params.banned) | ({mask_id} if mask_id is not None else set())))
    params = SamplingParams(**{**params.__dict__, "banned": banned, "temperature": temperature, "top_k": top_k,
                               "top_p": top_p})
    generator = torch.Generator().manual_seed(seed)
    model.eval()

    seqs = [SequenceState(prompt=list(p)) for p in prompts]
    cache = DecodeCache(model.spec, len(seqs), max(map(len, prompts)) + max_new_tokens + 2 * b + 2,
                        dtype=model.dtype, device=model.embed.weight.device)
    run = _Run(_Batch(model, cache, pad_id=mask_id if mask_id is not None else 0, block_size=b), cache, params,
               generator, mode, b, levels, mask_id, verifier, max_new_tokens, tuple(stop_tokens))
    start = time.perf_counter()
    _prefill(run, seqs)
    while not all(s.done for s in seqs):
        _decode_round(run, seqs)
        if progress is not None:
            progress(sum(len(s.generated) for s in seqs))
    seconds = time.perf_counter() - start
    return GenerationResult([s.generated for s in seqs], [s.accepted for s in seqs],
                            [s.forward_passes for s in seqs], seconds, mode, b)


@dataclass
class _Run:
    """What every step of one `generate` call reads."""

    batch: _Batch
    cache: DecodeCache
    params: SamplingParams
    generator: torch.Generator
    mode: str
    block_size: int
    levels: tuple[int, ...]
    mask_id: int | None
    verifier: str
    max_new_tokens: int
    stop_tokens: tuple[int, ...]


def _prefill(run: _Run, seqs: list[SequenceState]) -> None:
    """The prompt (causal) and, for TiDAR, one mask block whose slots 1..b-1 are the first drafts."""
    b, params = run.block_size, run.params
    plans = []
    for s in seqs:
        P = len(s.prompt)
        if run.mode == "tidar":
            plans.append((s.prompt + [run.mask_id] * b, prefill_pattern(P, b)))
        else:
            plans.append((s.prompt, causal_pattern(P)))
    logits = run.batch.run(plans).cpu()
    for i, s in enumerate(seqs):
        P = len(s.prompt)
        s.forward_passes += 1
        run.cache.commit(i, list(range(P)))
        s.pending = int(_sample(probabilities(logits[i, P - 1], params), params, run.generator))
        s.generated.append(s.pending)
        if run.mode == "tidar":
            _take_drafts(s, logits[i, P + 1: P + b], params, run.generator)
        _check_stop(s, run.max_new_tokens, run.stop_tokens)


def _decode_round(run: _Run, seqs: list[SequenceState]) -> None:
    """One forward over every unfinished sequence: verify its drafts, commit, take the next drafts."""
    b, params = run.block_size, run.params
    plans = []
    for i, s in enumerate(seqs):
        if s.done:
            plans.append(None)
            continue
        m = len(s.drafts)
        lv = _usable_levels(run.levels, m) if run.mode == "tidar" else ()
        row_ids = [s.pending] + s.drafts + [run.mask_id] * (b * len(lv))
        plans.append((row_ids, decode_pattern(run.cache.lengths[i], m, b, lv)))
    logits = run.batch.run(plans)
    fused = _fused_verdicts(seqs, logits, params, run.generator) if run.verifier == "fused" else None
    logits = logits.cpu()
    for i, s in enumerate(seqs):
        if s.done:
            continue
        m = len(s.drafts)
        s.forward_passes += 1
        n, token = fused[i] if fused is not None else _verdict(s, logits[i, : m + 1], params, run.generator)
        run.cache.commit(i, list(range(n + 1)))  # c, d_1..d_n; rejected rows are dropped
        s.accepted.append(n)
        s.generated.extend(s.drafts[:n] + [token])
        s.pending = token
        if run.mode == "tidar":
            lv = _usable_levels(run.levels, m)
            a = max(x for x in lv if x <= n)
            block_row = m + 1 + b * lv.index(a)
            _take_drafts(s, logits[i, block_row + n - a + 1: block_row + b], params, run.generator)
        _check_stop(s, run.max_new_tokens, run.stop_tokens)


def _verdict(s: SequenceState, verify_logits: torch.Tensor, params: SamplingParams,
             generator: torch.Generator) -> tuple[int, int]:
    """(accepted drafts n, the token at position n) of one sequence, by the reference samplers."""
    target = target_probs(verify_logits, s.draft_logits, params)
    drafts = torch.tensor(s.drafts, dtype=torch.long)
    if params.sampler == "greedy":
        return verify_greedy(target, drafts)
    uniforms = torch.rand(len(s.drafts), generator=generator, dtype=torch.float64).float()
    return verify_stochastic(target, s.draft_q, drafts, uniforms, draw_gumbel((len(s.drafts) + 1, target.shape[-1]),
                                                                              generator))


def _usable_levels(levels: tuple[int, ...], drafts: int) -> tuple[int, ...]:
    """The proposal levels a step with `drafts` drafts can verify (0 is always among them)."""
    return tuple(a for a in levels if a <= drafts)


def _fused_verdicts(seqs, logits, params, generator) -> dict[int, tuple[int, int]]:
    """Verify every active sequence with one call of the engine's verifier (the fused kernels), each sequence
    keyed on its own seed drawn from the loop's generator."""
    from ..batched_sampling import KIND_CODES
    from ..verify import verify_slots

    active = [i for i, s in enumerate(seqs) if not s.done]
    M = max(len(seqs[i].drafts) for i in active)
    B, V, device = len(active), logits.shape[-1], logits.device
    ar = torch.zeros(B, M + 1, V, device=device)
    draft = torch.zeros(B, M, V, device=device)
    drafts = torch.zeros(B, M, dtype=torch.long, device=device)
    for row, i in enumerate(active):
        m = len(seqs[i].drafts)
        ar[row, : m + 1] = logits[i, : m + 1]
        if m:
            draft[row, :m] = seqs[i].draft_logits.to(device)
            drafts[row, :m] = torch.tensor(seqs[i].drafts)
    num = torch.tensor([len(seqs[i].drafts) for i in active], device=device)
    seeds = torch.randint(0, 2**62, (B,), generator=generator).to(device)

    def per_slot(value, dtype=torch.float32):
        return torch.full((B,), value, dtype=dtype, device=device)

    if len(params.banned) > 1:
        raise ZdiffError(f"the fused verifier bans one id (the mask), got {len(params.banned)}")
    filtered = bool(params.top_k) or params.top_p < 1.0
    accepted, token = verify_slots("fused", ar, draft, drafts, num, per_slot(0, torch.long),
                                   per_slot(KIND_CODES[params.sampler], torch.long), per_slot(params.temperature),
                                   per_slot(params.top_k, torch.long), per_slot(params.top_p),
                                   per_slot(params.mix_weight), seeds, params.banned[0] if params.banned else -1,
                                   filtered)
    return {i: (int(a), int(t)) for i, a, t in zip(active, accepted.tolist(), token.tolist())}


def _take_drafts(s: SequenceState, slot_logits: torch.Tensor, params: SamplingParams, generator) -> None:
    """Sample the next drafts independently, one per block slot, from that slot's q."""
    if slot_logits.shape[0] == 0:
        s.drafts, s.draft_q, s.draft_logits = [], None, None
        return
    q = probabilities(slot_logits, params)
    if params.sampler == "greedy":
        drafts = torch.argmax(q, dim=-1)
        q = torch.nn.functional.one_hot(drafts, q.shape[-1]).float()  # a point mass
    else:
        drafts = _sample(q, params, generator)
    s.drafts, s.draft_q, s.draft_logits = drafts.tolist(), q, slot_logits


def _check_stop(s: SequenceState, max_new_tokens: int, stop_tokens: tuple[int, ...]) -> None:
    """`rules.delivered_tokens` over what the sequence generated so far (earlier steps never held a stop token)."""
    tokens = torch.tensor([s.generated])
    delivered, done = delivered_tokens(tokens, torch.tensor([len(s.generated)]), torch.tensor([stop_tokens or (-1,)]),
                                       torch.zeros(1, dtype=torch.long), torch.tensor([max_new_tokens]))
    s.generated, s.done = s.generated[: int(delivered)], bool(done)
