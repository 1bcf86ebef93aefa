"""Request bodies of the OpenAI endpoints (pydantic) and their mapping onto engine RequestParams.

Unknown fields are ignored, as OpenAI-compatible servers do, except fields that would change
the answer and that zdiff does not implement: those are refused by name (a silently ignored
`logprobs` or `presence_penalty` would be a wrong answer, not a missing feature).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..generation.engine import RequestParams
from ..limits import MAX_STOP_STRING_CHARS, MAX_STOP_STRINGS, MAX_TEMPERATURE

# field -> its value when unused; anything else is refused
UNSUPPORTED = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "tools": (None, []),
    "functions": (None, []),
    "response_format": (None, {"type": "text"}),
}


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields both endpoints share: OpenAI's sampling fields and zdiff's extensions."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    # zdiff extensions
    sampler: Literal["lossless", "logit_mix", "greedy"] | None = None
    mix_weight: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0)
    mode: Literal["ar", "tidar"] | None = None
    return_token_ids: bool = False  # each choice / chunk also carries the token ids behind its text

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, unused in UNSUPPORTED.items():
                if name in data and data[name] not in unused:
                    raise ValueError(f"{name}: not supported by zdiff serve, got {data[name]!r}")
        return data

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("zdiff serve returns one choice per request; only n = 1 is supported")
        return n

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
    prompt: str | list[str] | list[int]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt):
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise ValueError(f"one prompt per request (n = 1), got a batch of {len(prompt)}")
            return prompt[0]
        return prompt


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
    mix_weight: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    mode: str = "tidar"

    @classmethod
    def from_spec(cls, spec) -> SamplerDefaults:
        s = spec.sampler
        return cls(
            sampler=s.kind,
            mix_weight=1.0 if s.mix_weight is None else s.mix_weight,
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
    body: SamplingRequest, defaults: SamplerDefaults, max_new_tokens: int, stop_tokens: tuple[int, ...]
) -> RequestParams:
    """OpenAI semantics on top of the spec's defaults: temperature 0 means greedy; no seed means a fresh one."""
    if body.temperature == 0.0:
        if body.sampler not in (None, "greedy"):
            raise FieldError(
                "temperature",
                f"temperature: 0 means greedy decoding; sampler {body.sampler} needs a positive temperature",
            )
        sampler = "greedy"
    else:
        sampler = body.sampler or defaults.sampler
    return RequestParams(
        max_new_tokens=max_new_tokens,
        mode=body.mode or defaults.mode,
        sampler=sampler,
        temperature=body.temperature or defaults.temperature,
        top_k=defaults.top_k if body.top_k is None else body.top_k,
        top_p=defaults.top_p if body.top_p is None else body.top_p,
        mix_weight=defaults.mix_weight if body.mix_weight is None else body.mix_weight,
        seed=secrets.randbelow(2**31) if body.seed is None else body.seed,
        stop_tokens=stop_tokens,
    )
