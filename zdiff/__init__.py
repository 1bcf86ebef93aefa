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


def generate(model, prompts, params=None, *, loop: str = "engine", **kwargs):
    """Decode token-id prompts; returns a GenerationResult (tokens, forward passes, acceptance).

    loop="engine" (default): the decode engine (zdiff.generation.engine: device-resident steps,
    continuous batching, CUDA/HIP graphs on a GPU); keyword arguments of
    zdiff.generation.api.generate_on_engine (diffusion, mode, max_new_tokens, stop_tokens, seed,
    proposals, max_slots). loop="reference": the host-driven oracle (zdiff.generation.loop.generate,
    which also takes verifier="fused")."""
    from .errors import ZdiffError
    from .generation import SamplingParams
    from .generation.api import generate_on_engine
    from .generation.loop import generate as reference_loop

    loops = {"engine": generate_on_engine, "reference": reference_loop}
    if loop not in loops:
        raise ZdiffError(f"loop must be engine or reference, got {loop!r}")
    return loops[loop](model, prompts, params or SamplingParams(), **kwargs)


__all__ = ["CheckpointError", "Spec", "SpecError", "ZdiffError", "__version__", "generate", "load_model", "load_spec"]
