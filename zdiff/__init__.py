"""zdiff: a spec -> Triton compiler and runtime for TiDAR block-diffusion MoE language models."""

__version__ = "0.1.0"

from .errors import CheckpointError, SpecError, ZdiffError  # noqa: E402
from .spec import Spec, load_spec  # noqa: E402


def load_model(checkpoint_dir, backend: str = "torch", device=None, dtype=None):
    """Load a zdiff checkpoint directory (spec.yaml + model.safetensors) as a model."""
    from .checkpoint.store import load_model as _load

    return _load(checkpoint_dir, backend=backend, device=device, dtype=dtype)


__all__ = ["CheckpointError", "Spec", "SpecError", "ZdiffError", "__version__", "load_model", "load_spec"]
