"""AR -> diffusion conversion: make sure the model has a mask token."""

from __future__ import annotations

import dataclasses

import torch

from ..checkpoint.tokenizer import Tokenizer
from ..runtime import Transformer, cast_model
from ..spec import Spec
from ..spec.validate import validate


def spare_token_id(tokenizer: Tokenizer, vocab_size: int) -> int | None:
    """An id the model has a row for but the tokenizer never produces (vocabularies are often padded)."""
    if tokenizer.tokenizer_json is None:
        return tokenizer.byte.mask_id if tokenizer.byte.mask_id < vocab_size else None
    used = tokenizer.hf.get_vocab_size(with_added_tokens=True)
    return used if used < vocab_size else None


def plan_mask_token(spec: Spec, tokenizer: Tokenizer) -> tuple[Spec, str]:
    """(spec with a mask token, what was done). A grown vocabulary means one new embedding row."""
    if spec.diffusion.mask_token_id is not None:
        return spec, f"mask token {spec.diffusion.mask_token_id} (from the spec)"
    spare = spare_token_id(tokenizer, spec.model.vocab_size)
    if spare is not None:
        spec = dataclasses.replace(spec, diffusion=dataclasses.replace(spec.diffusion, mask_token_id=spare))
        return spec, f"mask token {spare} (a spare id of the vocabulary)"
    V = spec.model.vocab_size
    new_spec = validate(dataclasses.replace(
        spec, model=dataclasses.replace(spec.model, vocab_size=V + 1),
        diffusion=dataclasses.replace(spec.diffusion, mask_token_id=V)))
    return new_spec, f"mask token {V} (a new embedding row; vocabulary {V} -> {V + 1})"


VOCAB_ROWS = ("embed.weight", "lm_head.weight")  # the tensors with one row per token id


def grow_vocab_rows(state: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """Append rows up to vocab_size, each the mean of the existing rows (a neutral start for a new token)."""
    state = dict(state)
    for name in VOCAB_ROWS:
        if name in state and state[name].shape[0] < vocab_size:
            old = state[name]
            extra = old.double().mean(dim=0, keepdim=True).to(old.dtype).expand(vocab_size - len(old), -1)
            state[name] = torch.cat([old, extra])
    return state


@torch.no_grad()
def add_mask_token(model: Transformer, spec: Spec, tokenizer: Tokenizer) -> tuple[Transformer, Spec, str]:
    """Return (model, spec, what was done). A new embedding row starts at the mean embedding."""
    new_spec, note = plan_mask_token(spec, tokenizer)
    if new_spec.model.vocab_size == spec.model.vocab_size:
        return model, new_spec, note
    grown = type(model)(new_spec.model)
    grown.load_state_dict(grow_vocab_rows(model.state_dict(), new_spec.model.vocab_size))
    return cast_model(grown, dtype=model.dtype, device=model.embed.weight.device), new_spec, note
