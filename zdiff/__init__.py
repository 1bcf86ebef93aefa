"""zdiff: a spec -> Triton compiler and runtime for TiDAR block-diffusion MoE language models."""

__version__ = "0.1.0"

from .errors import CheckpointError, SpecError, ZdiffError  # noqa: E402
from .spec import Spec, load_spec  # noqa: E402

BACKENDS = ("torch", "triton")


def load_model(checkpoint_dir, backend: str = "torch", device=None, dtype=None, kernels_dir=None):
    """Load a zdiff checkpoint directory (spec.yaml + safetensors) as a model.

    backend="torch": the reference model; backend="triton": the generated model wired to the
    kernels of `kernels_dir` (a `zdiff compile` output made by this zdiff; by default rendered into the
    cache, re-rendered whenever zdiff, its templates or the target's tables change)."""
    from .checkpoint.store import checkpoint_spec
    from .checkpoint.store import load_model as _load

    if backend not in BACKENDS:
        raise ZdiffError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    model_class = None
    if backend == "triton":
        from .codegen.generated import generated_model_class

        model_class = generated_model_class(checkpoint_spec(checkpoint_dir), device, kernels_dir)
    return _load(checkpoint_dir, device=device, dtype=dtype, model_class=model_class)


def generate(model, prompts, params=None, **kwargs):
    """Decode token-id prompts (see zdiff.generation.loop.generate); returns a GenerationResult."""
    from .generation import SamplingParams
    from .generation import generate as _generate

    return _generate(model, prompts, params or SamplingParams(), **kwargs)


__all__ = ["CheckpointError", "Spec", "SpecError", "ZdiffError", "__version__", "generate", "load_model", "load_spec"]
