"""Weights derived from parameters (a concatenation, a permuted copy), made once per weight version.

At inference a decode step would otherwise rebuild them in every layer of every forward: one
extra kernel and one extra weight-sized write each. When autograd has to see the derivation
(grad enabled and a source requires grad: training), it is recomputed on every call instead.
"""

from __future__ import annotations

import torch


def derived(owner, name: str, make, *sources: torch.Tensor) -> torch.Tensor:
    """make(*sources), cached on `owner` (a module) under `name` until a source's storage, version, dtype or
    device changes (load_state_dict, .to(), an optimizer step all change one of them)."""
    if torch.is_grad_enabled() and any(s.requires_grad for s in sources):
        return make(*sources)
    key = tuple((s.data_ptr(), s._version, s.dtype, s.device, tuple(s.shape)) for s in sources)
    cache = owner.__dict__.setdefault("_derived_weights", {})
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        with torch.no_grad():
            cache[name] = (key, make(*sources))
    return cache[name][1]
