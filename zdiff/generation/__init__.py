"""Generation: the decode engine (device-resident steps, the speculative verifier, continuous batching) and
its Python entry point `generate`. The reference loop, the oracle the engine is tested against, is
`zdiff.generation.oracle`."""

from ..sampler import SamplingParams
from .api import generate
from .engine import Engine
from .requests import RequestParams
from .result import GenerationResult

__all__ = ["Engine", "GenerationResult", "RequestParams", "SamplingParams", "generate"]
