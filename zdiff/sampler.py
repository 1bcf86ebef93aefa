"""The sampler vocabulary, written once: its names, its host form and the one check of its values.

Every entry point builds a `SamplingParams` or checks its numbers here: the spec's `sampler` block
(spec.validate), the CLI's --sampler / --temperature / ... flags, the Python API (zdiff.generate), the
engine's `RequestParams` and the server's request fields. The engine's per-slot tensor form is the slot
state's kind / temperature / top_k / top_p / mix_weight rows, filled from these values
(`generation.batched_sampling.KIND_CODES` maps the names to the kernels' codes).

    check_sampling(sampler, temperature, top_k, top_p, mix_weight)    # ZdiffError naming the field and value
    sampling_problem(...)                                             # the same rule: (field, value, reason)
    sampler_at_temperature(sampler, temperature)                      # temperature 0 means greedy
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal, get_args

from .errors import ZdiffError
from .limits import MAX_TEMPERATURE

SamplerName = Literal["lossless", "logit_mix", "greedy"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)

# logit_mix's weight when a request or flag picks that sampler without one. w = 1 *is* the lossless sampler, so a
# silent 1.0 would make "logit_mix" look like it does nothing; 0.5 is the seed's and the demo's operating point.
DEFAULT_MIX_WEIGHT = 0.5


@dataclass(frozen=True)
class SamplingParams:
    """The host form of a sampler: what the reference loop takes and what every request is built from."""

    sampler: str = "lossless"  # lossless | logit_mix | greedy: the name requests, flags and the server use
    mix_weight: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    banned: tuple[int, ...] = ()  # never sampled (the mask token)

    @classmethod
    def from_spec(cls, spec_sampler, banned=(), **overrides):
        """The spec's sampler block (`SamplerSpec`) with the overrides that are not None."""
        s = spec_sampler
        values = dict(sampler=s.kind, mix_weight=s.mix_weight, temperature=s.temperature, top_k=s.top_k,
                      top_p=s.top_p, banned=tuple(banned))
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["mix_weight"] is None:  # only logit_mix reads it; never silently 1.0 (= lossless)
            values["mix_weight"] = DEFAULT_MIX_WEIGHT if values["sampler"] == "logit_mix" else 1.0
        return cls(**values)


class SamplerConflict(ZdiffError):
    """A sampler other than greedy named together with temperature 0 (which means greedy decoding)."""

    def __init__(self, sampler: str):
        super().__init__(f"temperature: 0 means greedy decoding; sampler {sampler} needs a positive temperature")
        self.sampler = sampler


def sampler_at_temperature(sampler: str | None, temperature) -> str | None:
    """OpenAI's convention, shared by the CLI and the server: temperature 0 means greedy decoding. The
    sampler to use (None: the default's); SamplerConflict when another sampler is named with temperature 0."""
    if temperature == 0:
        if sampler not in (None, "greedy"):
            raise SamplerConflict(sampler)
        return "greedy"
    return sampler


def is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """A real number that is not NaN or infinite (a huge int counts: it is compared, never converted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return is_integer(value) or math.isfinite(value)


def sampling_problem(sampler, temperature, top_k, top_p, mix_weight) -> tuple[str, object, str] | None:
    """The first field out of range as (field, value, reason), or None: the one rule for a sampler's values."""
    if sampler not in SAMPLERS:
        return "sampler", sampler, f"must be one of {', '.join(SAMPLERS)}"
    greedy = sampler == "greedy"  # greedy ignores the temperature, 0 included
    if not (is_finite_number(temperature) and (temperature >= 0 if greedy else temperature > 0)
            and temperature <= MAX_TEMPERATURE):
        bound, hint = ("[0", "") if greedy else ("(0", " (use sampler greedy for argmax)")
        return "temperature", temperature, f"must be a finite number in {bound}, {MAX_TEMPERATURE:g}]{hint}"
    if not is_integer(top_k) or top_k < 0:
        return "top_k", top_k, "must be an integer >= 0 (0 = off)"
    if not (is_finite_number(top_p) and 0 < top_p <= 1):
        return "top_p", top_p, "must be in (0, 1]"
    if not (is_finite_number(mix_weight) and 0 <= mix_weight <= 1):
        return "mix_weight", mix_weight, "must be in [0, 1]"
    return None


def check_sampling(sampler, temperature, top_k, top_p, mix_weight) -> None:
    """A ZdiffError naming the first bad field and its value (`sampling_problem`)."""
    problem = sampling_problem(sampler, temperature, top_k, top_p, mix_weight)
    if problem is not None:
        field, value, reason = problem
        raise ZdiffError(f"{field}: {reason}, got {value!r}")
