"""Checks of what the engine and the reference loop take, and the values they compute with, so that no user
number reaches a tensor it cannot be stored in. The sampler's own rule is zdiff.sampler's (re-exported here).

    check_sampling(sampler, temperature, top_k, top_p, mix_weight)      # ZdiffError naming the field
    temperature, top_k, top_p = effective_sampling(temperature, top_k, top_p, vocab)
"""

from __future__ import annotations

from ..errors import ZdiffError
from ..limits import MIN_EFFECTIVE_TEMPERATURE, MIN_EFFECTIVE_TOP_P
from ..sampler import SAMPLERS, check_sampling, is_finite_number, is_integer

__all__ = ["SAMPLERS", "check_prompt_ids", "check_sampling", "effective_sampling", "is_finite_number", "is_integer"]


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
