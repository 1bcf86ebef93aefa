"""zdiff: a spec -> Triton compiler and runtime for TiDAR block-diffusion MoE language models."""

__version__ = "0.1.0"

from .errors import CheckpointError, SpecError, ZdiffError  # noqa: E402
from .spec import Spec, load_spec  # noqa: E402

BACKENDS = ("torch", "triton")


def load_model(checkpoint_dir, backend: str = "torch", device=None, dtype=None, kernels_dir=None,
               allow_nonfinite: bool = False):
    """Load a zdiff checkpoint directory (spec.yaml + safetensors) as a model.

    backend="torch": the reference model; backend="triton": the generated model wired to the
    kernels of `kernels_dir` (a `zdiff compile` output made by this zdiff; by default rendered into the
    cache, re-rendered whenever zdiff, its templates or the target's tables change). Weights with NaN / inf
    are refused (a CheckpointError) unless `allow_nonfinite`."""
    from .checkpoint.store import checkpoint_spec
    from .checkpoint.store import load_model as _load

    if backend not in BACKENDS:
        raise ZdiffError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    from .generation.api import CheckpointContext

    spec = checkpoint_spec(checkpoint_dir)
    model_class = None
    if backend == "triton":
        from .codegen.generated import generated_model_class

        model_class = generated_model_class(spec, device, kernels_dir)
    model = _load(checkpoint_dir, device=device, dtype=dtype, model_class=model_class, allow_nonfinite=allow_nonfinite)
    # the whole spec (diffusion settings, sampler defaults), tokenizer and stop ids, so that
    # zdiff.generate(model, "text") needs nothing passed by hand
    model.checkpoint = CheckpointContext.of(checkpoint_dir, spec)
    return model


def generate(model, prompts, params=None, *, loop: str = "engine", **kwargs):
    """Decode prompts (token-id lists, or text when the model came from `zdiff.load_model`); returns a
    GenerationResult (tokens, texts for text prompts, forward passes, acceptance). Defaults come from the
    checkpoint: diffusion settings, sampler, stop ids. See zdiff.generation.api.generate."""
    from .generation.api import generate as _generate

    return _generate(model, prompts, params, loop=loop, **kwargs)


__all__ = ["CheckpointError", "Spec", "SpecError", "ZdiffError", "__version__", "generate", "load_model", "load_spec"]
