"""AR -> diffusion conversion: make sure the model has a mask token."""

from __future__ import annotations

import dataclasses

import torch

from ..runtime import Transformer, cast_model
from ..spec import Spec
from ..spec.validate import validate
from .data import Tokenizer


def spare_token_id(tokenizer: Tokenizer, vocab_size: int) -> int | None:
    """An id the model has a row for but the tokenizer never produces (vocabularies are often padded)."""
    if tokenizer.tokenizer_json is None:
        return tokenizer.byte.mask_id if tokenizer.byte.mask_id < vocab_size else None
    used = tokenizer.hf.get_vocab_size(with_added_tokens=True)
    return used if used < vocab_size else None


@torch.no_grad()
def add_mask_token(model: Transformer, spec: Spec, tokenizer: Tokenizer) -> tuple[Transformer, Spec, str]:
    """Return (model, spec, what was done). A new embedding row starts at the mean embedding."""
    if spec.diffusion.mask_token_id is not None:
        return model, spec, f"mask token {spec.diffusion.mask_token_id} (from the spec)"
    spare = spare_token_id(tokenizer, spec.model.vocab_size)
    if spare is not None:
        spec = dataclasses.replace(spec, diffusion=dataclasses.replace(spec.diffusion, mask_token_id=spare))
        return model, spec, f"mask token {spare} (a spare id of the vocabulary)"
    V = spec.model.vocab_size
    new_spec = validate(dataclasses.replace(
        spec, model=dataclasses.replace(spec.model, vocab_size=V + 1),
        diffusion=dataclasses.replace(spec.diffusion, mask_token_id=V)))
    grown = Transformer(new_spec.model)
    state = model.state_dict()
    for name in ("embed.weight", "lm_head.weight"):
        if name in state:
            old = state[name].float()
            state[name] = torch.cat([old, old.mean(dim=0, keepdim=True)]).to(state[name].dtype)
    grown.load_state_dict(state)
    return cast_model(grown, dtype=model.dtype, device=model.embed.weight.device), new_spec, \
        f"mask token {V} (a new embedding row; vocabulary {V} -> {V + 1})"
