"""`zdiff.load_model`: a checkpoint directory as the reference model or the generated (Triton) model.

Above codegen (the generated model class) and checkpoint (weights, spec, tokenizer), below everything
that decodes, trains or serves, so that none of them imports the package root for it."""

from __future__ import annotations

from .checkpoint.context import CheckpointContext
from .checkpoint.store import checkpoint_spec
from .checkpoint.store import load_model as load_weights
from .errors import ZdiffError

BACKENDS = ("torch", "triton")


def load_model(checkpoint_dir, backend: str = "torch", device=None, dtype=None, kernels_dir=None,
               allow_nonfinite: bool = False):
    """Load a zdiff checkpoint directory (spec.yaml + safetensors) as a model.

    backend="torch": the reference model; backend="triton": the generated model wired to the
    kernels of `kernels_dir` (a `zdiff compile` output made by this zdiff; by default rendered into the
    cache, re-rendered whenever zdiff, its templates or the target's tables change). Weights with NaN / inf
    are refused (a CheckpointError) unless `allow_nonfinite`."""
    if backend not in BACKENDS:
        raise ZdiffError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    spec = checkpoint_spec(checkpoint_dir)
    model_class = None
    if backend == "triton":
        from .codegen.generated import generated_model_class

        model_class = generated_model_class(spec, device, kernels_dir)
    model = load_weights(checkpoint_dir, device=device, dtype=dtype, model_class=model_class,
                         allow_nonfinite=allow_nonfinite)
    # the whole spec (diffusion settings, sampler defaults), tokenizer and stop ids, so that
    # zdiff.generate(model, "text") needs nothing passed by hand
    model.checkpoint = CheckpointContext.of(checkpoint_dir, spec)
    return model
