"""Request bodies of the OpenAI endpoints (pydantic) and their mapping onto engine RequestParams.

Every field is either implemented or refused by name with a 400: an unknown field, or a known one
zdiff does not implement set to anything but its neutral value, would otherwise be a silently wrong
answer (the README lists the decision per field). `user` is accepted and ignored: it names the
caller and never changes an answer.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..generation.requests import RequestParams
from ..limits import MAX_STOP_STRING_CHARS, MAX_STOP_STRINGS, MAX_TEMPERATURE
from ..sampler import DEFAULT_MIX_WEIGHT, SamplerConflict, SamplerName, sampler_at_temperature

# field -> its value when unused; anything else is refused. min_p and min_tokens would act inside the decode
# step (a filter on every proposal's distribution; suppressing the stop ids until N tokens), which the
# engine does not do, so they are refused rather than approximated.
UNSUPPORTED = {
    "best_of": (None, 1),
    "min_p": (None, 0, 0.0),
    "min_tokens": (None, 0),
    "repetition_penalty": (None, 1, 1.0),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "tools": (None, []),
    "functions": (None, []),
    "response_format": (None, {"type": "text"}),
    "user": None,  # any value: accepted, ignored
}
# chat's logprobs (a bool plus top_logprobs) are not implemented; /v1/completions' are
CHAT_UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None, 0)}
MAX_CHOICES = 16  # n per prompt
MAX_PROMPTS = 64  # prompts per /v1/completions request
MAX_LOGPROBS = 20  # top alternatives per token (OpenAI allows 5, vLLM 20)


def _refuse_fields(cls, data: Any, unsupported: dict) -> Any:
    """Known-but-unimplemented fields with a non-neutral value, and unknown fields: a ValueError naming the
    field. Returns the body without the neutral ones."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for name, unused in unsupported.items():
        if name in data:
            if unused is not None and data[name] not in unused:
                raise ValueError(f"{name}: not supported by zdiff serve, got {data[name]!r}")
            del data[name]
    unknown = sorted(set(data) - set(cls.model_fields))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field; zdiff serve refuses fields it does not implement")
    return data


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields both endpoints share: OpenAI's sampling fields and zdiff's extensions."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # zdiff extensions
    sampler: SamplerName | None = None
    mix_weight: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0)
    mode: Literal["ar", "tidar"] | None = None
    return_token_ids: bool = False  # each choice / chunk also carries the token ids behind its text
    ignore_eos: bool = False  # vLLM's: the checkpoint's end-of-text ids do not end the request
    stop_token_ids: list[int] | None = Field(None, max_length=16)  # vLLM's: more ids that end it (kept)
    # MoE-aware TiDAR (lossless, speed only; RequestParams): at most this many drafts verified per step (one of the
    # engine's verify lengths; 0: the policy's), and the draft rows' expert budget
    verify_length: int | None = Field(None, ge=0)
    expert_budget: Literal["auto", "on", "off"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        return _refuse_fields(cls, data, {**UNSUPPORTED, **CHAT_UNSUPPORTED})

    def stop_tokens(self, eos: tuple[int, ...]) -> tuple[int, ...]:
        """The ids that end a request: the checkpoint's end of text (unless ignore_eos), then stop_token_ids."""
        ids = () if self.ignore_eos else tuple(eos)
        return ids + tuple(t for t in self.stop_token_ids or () if t not in ids)

    @field_validator("stop")
    @classmethod
    def _nonempty_stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if any(s == "" for s in stops):
            raise ValueError("stop: stop strings must not be empty")
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"stop: at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        longest = max(stops, key=len, default="")
        if len(longest) > MAX_STOP_STRING_CHARS:
            raise ValueError(f"stop: each stop string has at most {MAX_STOP_STRING_CHARS} characters, "
                             f"got one of {len(longest)}")
        return stop

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)  # 0 with echo: score the prompt, generate nothing
    echo: bool = False  # the prompt comes back in front of the text (and its logprobs with `logprobs`)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # AR log-probabilities, top-N alternatives

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        return _refuse_fields(cls, data, UNSUPPORTED)

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, prompt):
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt: an empty list (give a string, token ids, or a list of either)")
        if isinstance(prompt, list) and isinstance(prompt[0], (str, list)) and len(prompt) > MAX_PROMPTS:
            raise ValueError(f"prompt: at most {MAX_PROMPTS} prompts per request, got {len(prompt)}")
        return prompt

    @model_validator(mode="after")
    def _scoring_fields(self):
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens: 0 generates nothing; with echo it scores the prompt (echo: true)")
        if self.stream and (self.echo or self.logprobs is not None):
            raise ValueError(f"{'echo' if self.echo else 'logprobs'}: not available with stream: true (the "
                             "log-probabilities come from one scoring forward after generation)")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request: a string or a list of token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ... reach the template as given

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def for_template(self) -> dict:
        message = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            message["content"] = "".join(part.text for part in self.content)
        return message


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


@dataclass(frozen=True)
class SamplerDefaults:
    """What a request that sets nothing gets: the checkpoint spec's sampler and the engine's mode."""

    sampler: str = "lossless"
    mix_weight: float = DEFAULT_MIX_WEIGHT
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    mode: str = "tidar"

    @classmethod
    def from_spec(cls, spec) -> SamplerDefaults:
        s = spec.sampler
        return cls(
            sampler=s.kind,
            mix_weight=DEFAULT_MIX_WEIGHT if s.mix_weight is None else s.mix_weight,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            mode="tidar" if spec.diffusion is not None else "ar",
        )


class FieldError(ValueError):
    """A request field the engine cannot honour; the API answers 400 naming `param`."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def engine_params(
    body: SamplingRequest, defaults: SamplerDefaults, max_new_tokens: int, stop_tokens: tuple[int, ...],
    choice: int = 0,
) -> RequestParams:
    """OpenAI semantics on top of the spec's defaults: temperature 0 means greedy; no seed means a fresh one.
    Choice j of n with a seed uses seed + j (the n samples differ, and each is reproducible)."""
    try:
        sampler = sampler_at_temperature(body.sampler, body.temperature) or defaults.sampler
    except SamplerConflict as err:
        raise FieldError("temperature", str(err)) from None
    return RequestParams(
        max_new_tokens=max_new_tokens,
        mode=body.mode or defaults.mode,
        sampler=sampler,
        temperature=body.temperature or defaults.temperature,
        top_k=defaults.top_k if body.top_k is None else body.top_k,
        top_p=defaults.top_p if body.top_p is None else body.top_p,
        mix_weight=defaults.mix_weight if body.mix_weight is None else body.mix_weight,
        seed=secrets.randbelow(2**31) if body.seed is None else (body.seed + choice) % 2**63,
        stop_tokens=body.stop_tokens(stop_tokens),
        verify_length=body.verify_length or 0,
        expert_budget=body.expert_budget or "auto",
    )
