"""What a loaded checkpoint brings besides weights (`model.checkpoint`): spec, tokenizer, stop ids."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ZdiffError
from ..spec import Spec
from .tokenizer import checkpoint_tokenizer


@dataclass(frozen=True)
class CheckpointContext:
    """What a loaded checkpoint brings besides weights: its whole spec, tokenizer and stop ids.
    `tokenizer_error` says why text cannot be encoded (an import without tokenizer.json) instead of guessing."""

    directory: Path
    spec: Spec
    tokenizer: object | None
    stop_tokens: tuple[int, ...]
    tokenizer_error: str | None = None

    @classmethod
    def of(cls, directory, spec: Spec) -> "CheckpointContext":
        directory = Path(directory)
        try:
            tokenizer = checkpoint_tokenizer(directory, spec.model.vocab_size)
        except ZdiffError as err:
            return cls(directory, spec, None, (), str(err))
        return cls(directory, spec, tokenizer, stop_tokens_of(directory, tokenizer))


def stop_tokens_of(checkpoint: Path, tokenizer) -> tuple[int, ...]:
    """The ids that end a request: the byte tokenizer's eos, else generation_config.json's eos_token_id."""
    if tokenizer.tokenizer_json is None:
        return (tokenizer.byte.eos_id,)
    config = Path(checkpoint) / "generation_config.json"
    if config.is_file():
        eos = json.loads(config.read_text()).get("eos_token_id")
        if eos is not None:
            return tuple(eos) if isinstance(eos, list) else (eos,)
    return ()
