"""The decode engine: continuous batching over a fixed number of slots, one device-resident
step per forward pass, replayed as a CUDA/HIP graph per step shape.

    engine = Engine.from_checkpoint("runs/demo/tidar/final", max_slots=8)
    rid = engine.add(prompt_ids, RequestParams(max_new_tokens=64, sampler="lossless", seed=1))
    while engine.has_work():
        for event in engine.step():       # tokens committed for each request, one step late
            ...
    engine.result(rid).tokens

Host work per step: admit queued requests into free slots (each prompt prefilled in chunks),
pick the step shape (slot bucket, verify rows, proposal blocks), launch `decode_step` (a graph
replay on CUDA/ROCm), start one non-blocking copy of the (slots, b + 4) output packet, and read
the previous step's packet. The device never waits for the host; the host waits for a step
only when it has nothing else to do. The old host-driven loop (`zdiff.generation.oracle`) stays
as the oracle the engine is tested against.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ZdiffError
from ..spec import DiffusionSpec, Spec
from ..targets import GPU_TARGETS
from .batched_sampling import GREEDY, KIND_CODES
from .decode_step import StepConstants, StepShape, causal_chunk_inputs, decode_step
from .engine_device import _engine_device, _free_memory, _runtime_target, resolve_device
from .proposals import BUDGET_MODES, ProposalPolicy, StepOption
from .request_checks import check_prompt_ids, check_sampling, effective_sampling, is_integer
from .requests import (
    MAX_SEED,
    MAX_STOP_TOKENS,
    MODES,
    EngineStats,
    RequestParams,
    RequestResult,
    StepFailed,
    TokenEvent,
)
from .slot_state import ACCEPTED, COUNT, DONE, WAS_ACTIVE, SlotState
from .slots import SlotCache, StepLayout
from .step_graphs import bucket as slot_bucket
from .step_graphs import capture_graphs, step_shapes

VERIFIERS = ("fused", "torch")


def _first_line(error: Exception, limit: int = 300) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else "no message"


@dataclass
class _Request:
    request_id: int
    prompt: list[int]
    params: RequestParams
    tokens: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    forward_passes: int = 0
    prefill_passes: int = 0
    reported: int = 0  # tokens already handed out in events
    slot: int | None = None
    finish_reason: str | None = None
    drafts: int = 0  # host mirror of the slot's num_drafts after the last collected step (the policy's statistics)


@dataclass
class _Launched:
    """A step whose packet is on its way to the host."""

    slots: dict[int, int]  # slot -> request id at launch
    host: torch.Tensor
    event: object | None
    shape: StepShape


class Engine:
    """Not thread-safe: drive it from one thread (a server runs it in its own loop thread)."""

    def __init__(self, model, *, diffusion: DiffusionSpec | None = None, spec: Spec | None = None, max_slots: int = 8,
                 max_len: int = 2048, proposals: int | str = "auto", device=None, graphs: bool | None = None,
                 prefill_chunk: int = 256, target: str | None = None, verifier: str | None = None,
                 verify_lengths: tuple[int, ...] | None = None, expert_budgets: tuple[int | None, ...] | None = None):
        _check_sizes(max_slots=(max_slots, 1), max_len=(max_len, 2), prefill_chunk=(prefill_chunk, 1))
        self.model = model.eval()
        self.device = _engine_device(model.embed.weight.device, device)
        if target is not None and target not in GPU_TARGETS:
            raise ZdiffError(f"target: must be one of {', '.join(GPU_TARGETS)} (the card the proposal policy "
                             f"plans for), got {target!r}")
        # the fused Triton verifier on a GPU; on the CPU the same maths as torch ops (the kernels would run in
        # the interpreter: verifier="fused" with TRITON_INTERPRET=1 for debugging and tests)
        self.verifier = verifier or ("fused" if self.device.type == "cuda" else "torch")
        if self.verifier not in VERIFIERS:
            raise ZdiffError(f"verifier must be one of {', '.join(VERIFIERS)}, got {verifier!r}")
        model_spec = model.spec
        self.vocab = model_spec.vocab_size
        self.diffusion = diffusion if diffusion is not None and diffusion.mask_token_id is not None else None
        b = self.diffusion.block_size if self.diffusion else 1
        levels = tuple(self.diffusion.acceptance_levels or ()) if self.diffusion else ()
        self.block_size, self.levels = b, levels
        self.mask_id = self.diffusion.mask_token_id if self.diffusion else None
        self.max_slots, self.max_len, self.prefill_chunk = max_slots, max_len, prefill_chunk
        self._check_memory(model_spec)

        spec = spec or Spec(model=model_spec, diffusion=self.diffusion or DiffusionSpec())
        if target is None:
            target = _runtime_target(self.device)
        # the (P, d, budget) options the steps choose among (each captured per slot bucket); defaults: proposals.py
        self.policy = ProposalPolicy(spec, levels, proposals if self.diffusion else 0, target, verify_lengths,
                                     expert_budgets)
        # layout, bookkeeping and commit as Triton kernels on a GPU (and with the fused verifier in the interpreter)
        kernels = self.device.type == "cuda" or self.verifier == "fused"
        self.cache = SlotCache(model_spec, max_slots, max_len, spare=b + 1, dtype=model.dtype, device=self.device,
                               scratch_rows=max_slots * b * (1 + len(levels)), kernels=kernels)
        self.state = SlotState.allocate(max_slots, b, self.vocab, MAX_STOP_TOKENS, self.device,
                                        model.dtype)
        dev = self.device
        self.constants = StepConstants(
            block_size=b, level_values=levels, levels=torch.tensor(levels, dtype=torch.long, device=dev),
            banned=torch.tensor([] if self.mask_id is None else [self.mask_id], dtype=torch.long, device=dev),
            fill_id=self.mask_id if self.mask_id is not None else 0,
            banned_id=self.mask_id if self.mask_id is not None else -1, verifier=self.verifier,
            kernels=kernels)
        cuda = self.device.type == "cuda"
        self.graphs = cuda if graphs is None else graphs
        if self.graphs and not cuda:
            raise ZdiffError("graphs=True needs a CUDA or ROCm device")
        self._graphs: dict[StepShape, torch.cuda.CUDAGraph] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.graphs else None
        self._host_packets = [torch.empty(self.state.packet.shape, dtype=torch.long, pin_memory=cuda) for _ in range(2)]

        self._requests: dict[int, _Request] = {}
        self._queue: deque[int] = deque()
        self._slots: list[int | None] = [None] * max_slots
        self._launched: deque[_Launched] = deque()
        self._events: list[TokenEvent] = []
        self._next_id = 0
        self._may_have_drafts = False
        self.broken: str | None = None  # set when a failed step could not be cleaned up
        self.stats = EngineStats(max_slots=max_slots, tokens_per_step=[0] * b)
        if self.graphs:  # every shape up front: no capture (and no latency spike) while serving
            self._graphs = capture_graphs(self.step_shapes(), self._run_step, self._pool)

    def step_shapes(self) -> list[StepShape]:
        """Every step shape this engine can launch (what `graphs` captures at construction), largest first."""
        return step_shapes(self.max_slots, self.block_size, self.policy.options, StepShape)

    def _run_step(self, shape: StepShape) -> None:
        with torch.no_grad():
            decode_step(self.model, self.state.prefix(shape.slots), self.cache.view(0, shape.slots), shape,
                        self.constants)

    @classmethod
    def from_checkpoint(cls, checkpoint_dir, *, backend: str | None = None, device=None, dtype=None,
                        kernels_dir=None, **kwargs) -> "Engine":
        """Load a checkpoint and build an engine. Defaults: the generated kernels in bf16 on a GPU,
        the reference model in fp32 on the CPU."""
        from ..checkpoint.store import SPEC_FILE
        from ..loading import load_model
        from ..spec import load_spec

        device = resolve_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        on_gpu = device.type == "cuda"
        backend = backend or ("triton" if on_gpu else "torch")
        dtype = dtype or (torch.bfloat16 if on_gpu else torch.float32)
        model = load_model(checkpoint_dir, backend=backend, device=device, dtype=dtype, kernels_dir=kernels_dir)
        spec = load_spec(Path(checkpoint_dir) / SPEC_FILE)
        return cls(model, diffusion=spec.diffusion, spec=spec, device=device, **kwargs)

    # ---- requests ---------------------------------------------------------------------------

    def validate(self, prompt: list[int], params: RequestParams) -> None:
        """Raise ZdiffError (one line naming the field and value) for a request this engine cannot run."""
        p = params
        prompt = check_prompt_ids(prompt, self.vocab)
        if self.mask_id is not None and self.mask_id in prompt:
            raise ZdiffError(f"prompt: contains the mask token id {self.mask_id}")
        if not is_integer(p.max_new_tokens) or p.max_new_tokens < 1:
            raise ZdiffError(f"max_new_tokens: must be a positive integer, got {p.max_new_tokens!r}")
        if len(prompt) + p.max_new_tokens > self.max_len:
            raise ZdiffError(f"max_new_tokens: prompt ({len(prompt)} tokens) + max_new_tokens ({p.max_new_tokens}) "
                             f"exceeds the engine's max_len {self.max_len}")
        if p.mode not in MODES:
            raise ZdiffError(f"mode: must be one of {', '.join(MODES)}, got {p.mode!r}")
        if p.mode == "tidar" and self.diffusion is None:
            raise ZdiffError("mode: 'tidar' needs diffusion settings with a mask token (a converted checkpoint)")
        check_sampling(p.sampler, p.temperature, p.top_k, p.top_p, p.mix_weight)
        if not is_integer(p.seed) or not 0 <= p.seed <= MAX_SEED:
            raise ZdiffError(f"seed: must be an integer in [0, 2^63), got {p.seed!r}")
        if not isinstance(p.stop_tokens, (tuple, list)):
            raise ZdiffError(f"stop_tokens: must be a tuple of token ids, got {p.stop_tokens!r:.80}")
        if len(p.stop_tokens) > MAX_STOP_TOKENS:
            raise ZdiffError(f"stop_tokens: at most {MAX_STOP_TOKENS}, got {len(p.stop_tokens)}")
        bad = [t for t in p.stop_tokens if not isinstance(t, int) or not 0 <= t < self.vocab]
        if bad:
            raise ZdiffError(f"stop_tokens: ids must be integers in [0, {self.vocab}), got {bad[0]!r}")
        self._check_speculation(p)

    def _check_speculation(self, p: RequestParams) -> None:
        lengths, budgets = self.policy.verify_lengths, self.policy.budgets
        if not (is_integer(p.verify_length) and (p.verify_length == 0 or p.verify_length in lengths)):
            allowed = ", ".join(map(str, lengths)) or "none: this engine runs no proposals"
            raise ZdiffError(f"verify_length: must be 0 (the policy's choice) or one of this engine's verify lengths "
                             f"({allowed}), got {p.verify_length!r}")
        if p.expert_budget not in BUDGET_MODES:
            raise ZdiffError(f"expert_budget: must be one of {', '.join(BUDGET_MODES)}, got {p.expert_budget!r}")
        if p.expert_budget == "on" and all(m is None for m in budgets):
            raise ZdiffError("expert_budget: 'on' needs an engine with a draft expert budget (a mixture-of-experts "
                             "model and expert_budgets with an integer), this one has none")

    def add(self, prompt: list[int], params: RequestParams = RequestParams()) -> int:
        if not isinstance(params, RequestParams):
            raise ZdiffError(f"params: must be a RequestParams, got {type(params).__name__}")
        self.validate(prompt, params)
        prompt = check_prompt_ids(prompt, self.vocab)
        temperature, top_k, top_p = effective_sampling(params.temperature, params.top_k, params.top_p, self.vocab)
        params = dataclasses.replace(params, temperature=temperature, top_k=top_k, top_p=top_p,
                                     max_new_tokens=int(params.max_new_tokens), seed=int(params.seed),
                                     stop_tokens=tuple(int(t) for t in params.stop_tokens))
        rid = self._next_id
        self._next_id += 1
        self._requests[rid] = _Request(rid, prompt, params)
        self._queue.append(rid)
        return rid

    def cancel(self, request_id: int) -> None:
        req = self._requests.get(request_id)
        if req is None or req.finish_reason is not None:
            return
        if req.slot is None:
            self._queue.remove(request_id)
        else:
            self.state.active[req.slot] = False  # stream-ordered after any step in flight
            self._slots[req.slot] = None
        self._finish(req, "cancelled")

    def result(self, request_id: int) -> RequestResult | None:
        req = self._requests.get(request_id)
        if req is None or req.finish_reason is None:
            return None
        return RequestResult(req.request_id, req.prompt, list(req.tokens), req.forward_passes, list(req.accepted),
                             req.finish_reason, req.prefill_passes)

    def has_work(self) -> bool:
        return bool(self._queue or any(s is not None for s in self._slots) or self._launched or self._events)

    def run(self, progress=None) -> dict[int, RequestResult]:
        """Step until every request finished; `progress(tokens so far)` after each step."""
        while self.has_work():
            self.step()
            if progress is not None:
                progress(self.stats.tokens)
        return {rid: self.result(rid) for rid, req in self._requests.items() if req.finish_reason is not None}

    # ---- one step ---------------------------------------------------------------------------

    def step(self) -> list[TokenEvent]:
        """One engine step; the events of the requests that committed tokens or finished. If the step
        fails, every request in a slot ends with finish_reason "error", the slots and caches are reset,
        and StepFailed (carrying those events) is raised: queued requests run at the next step."""
        if self.broken is not None:
            raise StepFailed(self.broken, [], recovered=False)
        try:
            return self._step()
        except Exception as error:
            raise self._recover(error) from error

    def _recover(self, error: Exception) -> "StepFailed":
        for slot, rid in enumerate(self._slots):
            if rid is not None:
                self._slots[slot] = None
                self._finish(self._requests[rid], "error")
        failed = [e.request_id for e in self._events if e.finish_reason == "error"]
        self._launched.clear()
        self._may_have_drafts = False
        events, self._events = self._events, []
        message = (f"engine step failed ({type(error).__name__}: {_first_line(error)}); "
                   f"{len(failed)} request(s) in flight ended with finish_reason 'error'")
        try:
            with torch.no_grad():
                fresh = SlotState.allocate(self.max_slots, self.block_size, self.vocab, MAX_STOP_TOKENS, self.device)
                for name in vars(fresh):
                    getattr(self.state, name).copy_(getattr(fresh, name))  # in place: captured graphs keep them
                for slot in range(self.max_slots):
                    self.cache.reset_slot(slot)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as reset_error:  # the device itself is gone (a sticky CUDA error): no request can run
            self.broken = (f"{message}; resetting the slots failed too ({type(reset_error).__name__}: "
                           f"{_first_line(reset_error)}), the engine cannot run any more requests")
            return StepFailed(self.broken, events, recovered=False)
        return StepFailed(message, events, recovered=True)

    def _step(self) -> list[TokenEvent]:
        start = time.perf_counter()
        waited = 0.0
        self._admit()
        self._compact()
        occupied = [s for s, rid in enumerate(self._slots) if rid is not None]
        if occupied:
            self._launch(occupied)
        if len(self._launched) > (1 if occupied else 0):
            waited = self._collect(self._launched.popleft())
        events, self._events = self._events, []
        total = time.perf_counter() - start
        self.stats.step_seconds = total
        self.stats.wait_seconds += waited
        self.stats.host_seconds += total - waited
        self.stats.active_slots = sum(s is not None for s in self._slots)
        self.stats.queue_depth = len(self._queue)
        return events

    def _shape(self, occupied: list[int]) -> StepShape:
        reqs = [self._requests[self._slots[s]] for s in occupied]
        tidar = [r.params for r in reqs if r.params.mode == "tidar"]
        context = sum(len(r.prompt) + len(r.tokens) for r in reqs) // len(reqs)
        cap = min((p.verify_length for p in tidar if p.verify_length), default=None)
        wishes = {p.expert_budget for p in tidar}
        budget_mode = "off" if "off" in wishes else "on" if "on" in wishes else "auto"
        option = self.policy.choose(len(reqs), context, cap, budget_mode) if tidar else StepOption(0, 0, None)
        p = option.proposals
        # an AR step after a TiDAR one still verifies the drafts in flight (at most the requests' cap)
        d = option.verify if p else min(self.policy.max_verify, cap or self.policy.max_verify)
        verify_rows = 1 + d if (self._may_have_drafts and self.block_size > 1) else 1
        filtered = any(r.params.top_k > 0 or r.params.top_p < 1 for r in reqs)
        bucket = slot_bucket(occupied[-1] + 1, self.max_slots)
        self.stats.proposals_used[p] = self.stats.proposals_used.get(p, 0) + 1
        self.stats.steps_used[option] = self.stats.steps_used.get(option, 0) + 1
        self._may_have_drafts = p > 0
        return StepShape(bucket, verify_rows, p, filtered, self.block_size, option.budget if p else None)

    def _launch(self, occupied: list[int]) -> None:
        shape = self._shape(occupied)
        if self.graphs:
            self._graphs[shape].replay()  # every shape the engine launches was captured (step_shapes)
            self.stats.graph_replays += 1
        else:
            self._run_step(shape)
            self.stats.eager_steps += 1
        self.stats.steps += 1
        self.stats.forward_passes += 1
        host = self._host_packets[self.stats.steps % 2]
        host[: shape.slots].copy_(self.state.packet[: shape.slots], non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        snapshot = {s: self._slots[s] for s in occupied}
        self._launched.append(_Launched(snapshot, host, event, shape))

    def _compact(self) -> None:
        """Move the highest occupied slots into the holes below them, so that slots [0, n) hold the n requests
        and the step's bucket follows n, not the highest slot a finished request left behind (device copies,
        stream-ordered after any step in flight; a packet in flight still names the old slot)."""
        while True:
            occupied = [s for s, rid in enumerate(self._slots) if rid is not None]
            holes = [s for s in range(len(occupied)) if self._slots[s] is None]
            if not holes:
                return
            source, target = occupied[-1], holes[0]
            with torch.no_grad():
                self.state.move_slot(source, target)
                self.cache.move_slot(source, target)
            rid = self._slots[source]
            self._slots[target], self._slots[source] = rid, None
            self._requests[rid].slot = target
            self.stats.slot_moves += 1

    def _collect(self, launched: _Launched) -> float:
        start = time.perf_counter()
        if launched.event is not None:
            launched.event.synchronize()
        waited = time.perf_counter() - start
        b = self.block_size
        rows = launched.host[: max(launched.slots) + 1].tolist() if launched.slots else []
        for slot, rid in launched.slots.items():
            req = self._requests[rid]
            row = rows[slot]
            if req.finish_reason is not None or not row[b + WAS_ACTIVE]:
                continue  # cancelled while in flight, or finished on the device one step earlier
            count = row[b + COUNT]
            req.tokens.extend(row[:count])
            req.forward_passes += 1
            self.stats.tokens += count
            if count:
                self.stats.tokens_per_step[count - 1] += 1
            if count:
                req.accepted.append(count - 1)
            if req.params.mode == "tidar":
                self._observe(req, launched.shape, row[b + ACCEPTED])
            if row[b + DONE]:
                stopped = bool(req.tokens) and req.tokens[-1] in req.params.stop_tokens
                self._slots[req.slot] = None  # where the request is now (compaction may have moved it)
                self._finish(req, "stop" if stopped else "length")
            elif count:
                self._report(req, finished=False)
        return waited

    def _observe(self, req: _Request, shape: StepShape, accepted: int) -> None:
        """Feed the policy the drafts this step verified for `req` and how many it accepted, then mirror the
        device's next num_drafts (`draft_sampling.draft_rows`): the block at the largest placed level a <= n
        supplies b - 1 - (n - a) drafts."""
        b = self.block_size
        offered = min(req.drafts, shape.verify_rows - 1)
        if offered:
            self.policy.observe(accepted, offered, b - 1 - req.drafts, shape.budget is not None)
        placed = [a for a in self.levels[: shape.proposals] if a <= offered]
        level = max((a for a in placed if a <= accepted), default=placed[0] if placed else 0)
        req.drafts = b - 1 - (accepted - level) if placed else 0

    def _report(self, req: _Request, finished: bool) -> None:
        new = req.tokens[req.reported:]
        req.reported = len(req.tokens)
        self._events.append(TokenEvent(req.request_id, new, finished, req.finish_reason))

    def _finish(self, req: _Request, reason: str) -> None:
        req.finish_reason = reason
        req.slot = None
        self._report(req, finished=True)

    # ---- admission and prefill ---------------------------------------------------------------

    def _admit(self) -> None:
        admitted = []
        while self._queue and None in self._slots:
            slot = self._slots.index(None)
            req = self._requests[self._queue.popleft()]
            self._slots[slot], req.slot = req.request_id, slot
            self._load_slot(slot, req)
            admitted.append(req)
        if admitted:
            self._prefill(admitted)

    def _load_slot(self, slot: int, req: _Request) -> None:
        """Write a request's parameters into its slot. All prompt tokens but the last are prefilled
        (`_prefill`); the last becomes the pending token c, so the slot's first step samples the first
        new token and, for TiDAR, drafts the first block: DESIGN.md's prefill layout, one step later.
        The values travel in two pinned host rows, each one non-blocking copy (no stream stall)."""
        p, st = req.params, self.state
        kind = KIND_CODES[p.sampler]
        ints = {"tidar": p.mode == "tidar", "pending": req.prompt[-1], "num_drafts": 0, "generated": 0,
                "max_new": p.max_new_tokens, "kind": kind, "top_k": p.top_k, "seed": p.seed,
                "cache_len": len(req.prompt) - 1, "active": True}
        floats = {"temperature": 1.0 if kind == GREEDY else p.temperature, "top_p": p.top_p,
                  "mix_weight": p.mix_weight if p.sampler == "logit_mix" else 1.0}
        stops = list(p.stop_tokens) + [-1] * (MAX_STOP_TOKENS - len(p.stop_tokens))
        pinned = self.device.type == "cuda"
        host_ints = torch.tensor([int(v) for v in ints.values()] + stops, dtype=torch.long)
        host_floats = torch.tensor(list(floats.values()), dtype=torch.float32)
        if pinned:  # the caching host allocator keeps a pinned block until its copy has run
            host_ints, host_floats = host_ints.pin_memory(), host_floats.pin_memory()
        with torch.no_grad():
            dev_ints = host_ints.to(self.device, non_blocking=pinned)
            dev_floats = host_floats.to(self.device, non_blocking=pinned)
            self.cache.reset_slot(slot)
            st.stop_ids[slot].copy_(dev_ints[len(ints):])
            for i, name in enumerate(ints):
                getattr(st, name)[slot].copy_(dev_ints[i])
            for i, name in enumerate(floats):
                getattr(st, name)[slot].copy_(dev_floats[i])

    @torch.no_grad()
    def _prefill(self, admitted: list[_Request]) -> None:
        """The prompts (but their last tokens) of newly admitted requests, together, in causal chunks of
        at most prefill_chunk tokens per slot: a decode-kind layout with no blocks over the slots'
        prefix; slots with nothing to prefill take no rows (their cache is only written past its length)."""
        bucket = slot_bucket(max(r.slot for r in admitted) + 1, self.max_slots)
        cache = self.cache.view(0, bucket)
        chunk = self.prefill_chunk
        longest = max(len(r.prompt) - 1 for r in admitted)
        for start in range(0, longest, chunk):
            pieces = {r.slot: r.prompt[start:min(start + chunk, len(r.prompt) - 1)] for r in admitted}
            pieces = {slot: piece for slot, piece in pieces.items() if piece}
            width = max(map(len, pieces.values()))
            pinned = self.device.type == "cuda"  # non-blocking uploads from pinned memory: no stream stall
            tokens = torch.full((bucket, width), self.constants.fill_id, dtype=torch.long, pin_memory=pinned)
            begin = torch.zeros(bucket, dtype=torch.long, pin_memory=pinned)
            rows = torch.zeros(bucket, dtype=torch.long, pin_memory=pinned)
            for slot, piece in pieces.items():
                tokens[slot, : len(piece)] = torch.tensor(piece)
                begin[slot], rows[slot] = start, len(piece)
            tokens, begin, rows = (t.to(self.device, non_blocking=True) for t in (tokens, begin, rows))
            # running slots take no rows; their commit lands past their own length, never on their keys
            begin = torch.where(rows > 0, begin, self.state.cache_len[:bucket])
            ids, positions, preds = causal_chunk_inputs(tokens, begin, rows, cache.receptive_field)
            layout = StepLayout(self.block_size, (), begin.int(), rows.int(), rows.int())
            self.model(ids, positions=positions, predecessors=preds, cache=cache, layout=layout)
            cache.commit(begin, rows, width)
            self.stats.forward_passes += 1
            for req in admitted:
                req.prefill_passes += req.slot in pieces

    def _check_memory(self, spec) -> None:
        """Refuse a slot count / length whose cache and step buffers cannot fit (numbers in the message)."""
        a = spec.attention
        element = torch.finfo(self.model.dtype).bits // 8
        kv = 2 * spec.num_layers * self.max_slots * (self.max_len + self.block_size + 1) * a.num_kv_heads * a.head_dim
        rows = self.block_size * (1 + len(self.levels))
        logits = 8 * self.max_slots * rows * self.vocab * 4  # logits, processed copies, probabilities, sort
        # the commit's stash scratch (slots.SlotCache): K/V and the CCA projection of every row of a step, per layer
        width = 2 * a.num_kv_heads * a.head_dim + ((a.num_heads + 2 * a.num_kv_heads) * a.head_dim
                                                    if a.kind == "ccgqa" else 0)
        kv += spec.num_layers * self.max_slots * rows * width
        need = kv * element + logits
        free = _free_memory(self.device)
        if free is not None and need > free:
            raise ZdiffError(f"max_slots={self.max_slots}, max_len={self.max_len}: the engine needs about "
                             f"{need / 2**30:.1f} GiB (KV cache and stash {kv * element / 2**30:.1f} GiB, step buffers "
                             f"{logits / 2**30:.1f} GiB) but {self.device} has {free / 2**30:.1f} GiB free; "
                             f"lower max_slots or max_len")


def _check_sizes(**sizes: tuple[object, int]) -> None:
    """Each size argument an integer >= its minimum (a float or a bool is refused, not truncated)."""
    for name, (value, least) in sizes.items():
        if not is_integer(value) or value < least:
            raise ZdiffError(f"{name} must be an integer >= {least}, got {value!r}")
