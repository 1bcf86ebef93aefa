"""The reference loop: a host-driven, one-sequence-at-a-time decoder that is the independent oracle of the
speculative acceptance rule (per-sequence samplers with explicit randomness, a plain KV + CCA cache). The
engine (`zdiff.generation`) never imports it; tests decode with both and compare."""

from .decode_cache import DecodeCache
from .loop import checked_prompts, generate

__all__ = ["DecodeCache", "checked_prompts", "generate"]
