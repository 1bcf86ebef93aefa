"""zdiff: a spec -> Triton compiler and runtime for TiDAR block-diffusion MoE language models.

The public API, re-exported from the modules that define it; nothing inside zdiff imports this root
(tests/test_import_contracts.py checks it)."""

from ._version import __version__
from .errors import CheckpointError, SpecError, ZdiffError
from .loading import BACKENDS, load_model
from .spec import Spec, load_spec


def generate(model, prompts, params=None, *, loop: str = "engine", **kwargs):
    """Decode prompts (token-id lists, or text when the model came from `zdiff.load_model`); returns a
    GenerationResult (tokens, texts for text prompts, forward passes, acceptance). Defaults come from the
    checkpoint: diffusion settings, sampler, stop ids. See zdiff.generation.api.generate."""
    from .generation.api import generate as _generate

    return _generate(model, prompts, params, loop=loop, **kwargs)


__all__ = ["BACKENDS", "CheckpointError", "Spec", "SpecError", "ZdiffError", "__version__", "generate", "load_model",
           "load_spec"]
