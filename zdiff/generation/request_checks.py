"""Range and type checks of the sampling parameters the engine and the reference loop take, and the
values they are computed with, so that no user number reaches a tensor it cannot be stored in.

    check_sampling(sampler, temperature, top_k, top_p, mix_weight)      # ZdiffError naming the field
    temperature, top_k, top_p = effective_sampling(temperature, top_k, top_p, vocab)
"""

from __future__ import annotations

import math
import numbers

from ..errors import ZdiffError
from ..limits import MAX_TEMPERATURE, MIN_EFFECTIVE_TEMPERATURE, MIN_EFFECTIVE_TOP_P

SAMPLERS = ("lossless", "logit_mix", "greedy")


def is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """A real number that is not NaN or infinite (a huge int counts: it is compared, never converted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return is_integer(value) or math.isfinite(value)


def check_sampling(sampler, temperature, top_k, top_p, mix_weight) -> None:
    if sampler not in SAMPLERS:
        raise ZdiffError(f"sampler: must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    lowest = 0 if sampler == "greedy" else None  # greedy ignores the temperature, 0 included
    if not (is_finite_number(temperature) and (temperature >= 0 if lowest == 0 else temperature > 0)
            and temperature <= MAX_TEMPERATURE):
        hint = "" if sampler == "greedy" else " (use sampler greedy for argmax)"
        bound = "[0" if sampler == "greedy" else "(0"
        raise ZdiffError(f"temperature: must be a finite number in {bound}, {MAX_TEMPERATURE:g}]{hint}, "
                         f"got {temperature!r}")
    if not is_integer(top_k) or top_k < 0:
        raise ZdiffError(f"top_k: must be an integer >= 0 (0 = off), got {top_k!r}")
    if not (is_finite_number(top_p) and 0 < top_p <= 1):
        raise ZdiffError(f"top_p: must be in (0, 1], got {top_p!r}")
    if not (is_finite_number(mix_weight) and 0 <= mix_weight <= 1):
        raise ZdiffError(f"mix_weight: must be in [0, 1], got {mix_weight!r}")


def effective_sampling(temperature, top_k, top_p, vocab: int) -> tuple[float, int, float]:
    """The values a checked request is computed with: the same answer, in numbers fp32 and int64 hold.
    A temperature or top_p closer to 0 than fp32 can divide by / compare with is its greedy limit; a
    top_k at or past the vocabulary keeps every token, which is top_k off."""
    return (max(float(temperature), MIN_EFFECTIVE_TEMPERATURE), 0 if top_k >= vocab else int(top_k),
            max(float(top_p), MIN_EFFECTIVE_TOP_P))


def check_prompt_ids(prompt, vocab: int, field: str = "prompt") -> list[int]:
    """A non-empty list of in-vocabulary ids (plain ints), or a ZdiffError naming `field`."""
    if isinstance(prompt, (str, bytes)) or not hasattr(prompt, "__iter__"):
        raise ZdiffError(f"{field}: must be a list of token ids, got {type(prompt).__name__} {prompt!r:.80}")
    ids = list(prompt)
    if not ids:
        raise ZdiffError(f"{field}: needs at least one token")
    bad = [t for t in ids if not is_integer(t) or not 0 <= t < vocab]
    if bad:
        raise ZdiffError(f"{field}: token ids must be integers in [0, {vocab}), got {bad[0]!r:.80}")
    return [int(t) for t in ids]
