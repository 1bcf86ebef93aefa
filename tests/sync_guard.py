"""A guard that fails on any host synchronisation made *by zdiff's own code* while it is active.

On a CPU nothing really waits, so the guard looks at what the code asks for: reading a value
back (`.item()`, `.tolist()`, `.cpu()`, `.numpy()`, `bool()` / `int()` / `float()` of a tensor,
`nonzero`, which must size its output on the host) or uploading host data (`torch.tensor(...)`).
A call counts when the frame that makes it belongs to a module under `zdiff/` (or a generated kernel
module) that is not in HOST_MODULES, the named allow-list of modules that may synchronise, each with
its reason; torch's and Triton's own internals (the interpreter) are not ours. A new module is
watched without being named anywhere.
"""

from __future__ import annotations

import contextlib
import sys

import torch

WATCHED_PREFIXES = ("zdiff.", "zdiff_generated")  # every module of the package, and the generated kernels
HOST_MODULES: dict[str, str] = {  # may synchronise inside a guarded region; why
    # the two syncs of the reference model (backend="torch"), which the engine's CPU tests decode with; the
    # generated model (the engine's path on a GPU) has neither (test_generated_model guards it with no entry)
    "zdiff.runtime.moe": "the reference MoE groups tokens by expert with nonzero, whose output size the host "
                         "must know; the generated model's grouped MoE kernels take the routing as tensors",
    "zdiff.pattern.visibility": "anchor() uploads the compiled acceptance levels (a few ints) for the reference "
                                "model's dense mask; the kernels render them as constants (triton_anchor_source)",
}


class HostSyncError(AssertionError):
    pass


def watched(module: str, also: tuple[str, ...] = ()) -> bool:
    """Whether a call made by `module`'s code counts as a sync (`also`: more modules to watch, e.g. a test's)."""
    return module in also or ((module == "zdiff" or module.startswith(WATCHED_PREFIXES)) and module not in HOST_MODULES)


@contextlib.contextmanager
def no_host_sync(also: tuple[str, ...] = ()):
    patched = []

    def wrap(owner, name):
        original = getattr(owner, name)

        def checked(*args, **kwargs):
            frame = sys._getframe(1)
            module = frame.f_globals.get("__name__", "")
            if watched(module, also):
                raise HostSyncError(f"host sync: {name} called from {module}:{frame.f_lineno}")
            return original(*args, **kwargs)

        patched.append((owner, name, original))
        setattr(owner, name, checked)

    for name in ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__"):
        wrap(torch.Tensor, name)
    wrap(torch, "nonzero")
    wrap(torch, "tensor")
    try:
        yield
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
