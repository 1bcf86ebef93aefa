"""Generation: KV + CCA decoding state, the speculative verifier, AR and TiDAR loops."""

from .cache import DecodeCache
from .loop import generate
from .result import GenerationResult
from .sampling import SamplingParams

__all__ = ["DecodeCache", "GenerationResult", "SamplingParams", "generate"]
