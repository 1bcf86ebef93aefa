"""What the engine takes and gives per request: `RequestParams` in; `TokenEvent`s as tokens commit,
`RequestResult` at the end; `EngineStats` for the whole engine; `StepFailed` when a step raises."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..sampler import DEFAULT_MIX_WEIGHT

MODES = ("tidar", "ar")
MAX_STOP_TOKENS = 16
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class RequestParams:
    max_new_tokens: int = 64
    mode: str = "tidar"  # tidar | ar, per request (both mix in one batch)
    sampler: str = "lossless"  # lossless | logit_mix | greedy
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    mix_weight: float = DEFAULT_MIX_WEIGHT  # logit_mix only (w = 1 is lossless)
    seed: int = 0
    stop_tokens: tuple[int, ...] = ()  # ids that end the request (kept in the output)
    # MoE-aware TiDAR (lossless either way; speed only). verify_length: at most this many drafts verified per step
    # (one of the engine's verify lengths; 0: the policy's choice). expert_budget: auto (the policy's choice) | on
    # | off: the draft rows route only among the experts the step's verify rows chose (a step shared with an
    # "off" request runs without it)
    verify_length: int = 0
    expert_budget: str = "auto"


@dataclass
class TokenEvent:
    request_id: int
    tokens: list[int]  # committed since this request's last event
    finished: bool
    finish_reason: str | None  # stop | length | cancelled | error | None


@dataclass
class RequestResult:
    request_id: int
    prompt: list[int]
    tokens: list[int]
    forward_passes: int  # decode steps this request took part in (each delivers >= 1 token)
    accepted: list[int]  # drafts accepted (and delivered) per decode step
    finish_reason: str
    prefill_passes: int = 0  # prefill chunks (deliver no token; shared with the other admitted prompts)


@dataclass
class EngineStats:
    max_slots: int
    forward_passes: int = 0  # decode steps + prefill chunks
    steps: int = 0
    tokens: int = 0
    step_seconds: float = 0.0  # host wall time of the last step() call, waits included
    host_seconds: float = 0.0  # total host time in step() outside waits for the device
    wait_seconds: float = 0.0  # total host time waiting for a step's packet
    tokens_per_step: list[int] = field(default_factory=list)  # index k: slot-steps that delivered k+1 tokens
    proposals_used: dict[int, int] = field(default_factory=dict)
    steps_used: dict = field(default_factory=dict)  # steps per (P, d, budget) option (proposals.StepOption)
    graph_replays: int = 0
    eager_steps: int = 0
    slot_moves: int = 0  # requests moved down into a finished request's slot (compaction)
    active_slots: int = 0
    queue_depth: int = 0


class StepFailed(RuntimeError):
    """An engine step raised (a bug or a device error, not a bad request). `events`: what the step would
    have reported, the requests it ended with finish_reason "error" included; `recovered`: whether the
    engine reset its slots and takes further requests."""

    def __init__(self, message: str, events: list[TokenEvent], recovered: bool):
        super().__init__(message)
        self.events, self.recovered = events, recovered
