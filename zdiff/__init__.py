"""zdiff: a spec -> Triton compiler and runtime for TiDAR block-diffusion MoE language models."""

__version__ = "0.1.0"

from .errors import CheckpointError, SpecError, ZdiffError  # noqa: E402
from .spec import Spec, load_spec  # noqa: E402


def load_model(checkpoint_dir, backend: str = "torch", device=None, dtype=None, kernels_dir=None,
               allow_nonfinite: bool = False):
    """Load a zdiff checkpoint directory (spec.yaml + safetensors) as a model.

    backend="torch": the reference model; backend="triton": the generated model wired to the
    kernels of `kernels_dir` (a `zdiff compile` output; by default rendered into the cache).
    Weights with NaN / inf are refused (a CheckpointError) unless `allow_nonfinite`."""
    from .checkpoint.store import load_model as _load

    return _load(checkpoint_dir, backend=backend, device=device, dtype=dtype, kernels_dir=kernels_dir,
                 allow_nonfinite=allow_nonfinite)


def generate(model, prompts, params=None, **kwargs):
    """Decode token-id prompts (see zdiff.generation.loop.generate); returns a GenerationResult."""
    from .generation import SamplingParams
    from .generation import generate as _generate

    return _generate(model, prompts, params or SamplingParams(), **kwargs)


__all__ = ["CheckpointError", "Spec", "SpecError", "ZdiffError", "__version__", "generate", "load_model", "load_spec"]
