"""Generation: KV + CCA decoding state, the speculative verifier, AR and TiDAR loops."""

from .cache import DecodeCache
from .loop import GenerationResult, generate
from .sampling import SamplingParams

__all__ = ["DecodeCache", "GenerationResult", "SamplingParams", "generate"]
