"""A guard that fails on any host synchronisation made *by the guarded modules' own code*.

On a CPU nothing really waits, so the guard looks at what the code asks for: reading a value
back (`.item()`, `.tolist()`, `.cpu()`, `.numpy()`, `bool()` / `int()` / `float()` of a tensor,
`nonzero`, which must size its output on the host) or uploading host data (`torch.tensor(...)`).
A call counts when the frame that makes it belongs to a guarded module (the engine's modules and
generated kernel modules); torch's and Triton's own internals (the interpreter) are not ours.
"""

from __future__ import annotations

import contextlib
import sys

import torch

ENGINE_MODULES = ("zdiff.generation.engine", "zdiff.generation.decode_step", "zdiff.generation.batched_sampling",
                  "zdiff.generation.keyed_rng", "zdiff.generation.slots", "zdiff.generation.slot_state",
                  "zdiff.generation.verifier_kernel", "zdiff.generation.verify", "zdiff.generation.draft_sampling",
                  "zdiff.generation.step_kernels", "zdiff.generation.step_torch", "zdiff.generation.commit_kernel")
GENERATED_PREFIX = "zdiff_generated"


class HostSyncError(AssertionError):
    pass


def _guarded(module: str, modules: tuple[str, ...]) -> bool:
    return module in modules or module.startswith(GENERATED_PREFIX)


@contextlib.contextmanager
def no_host_sync(modules: tuple[str, ...] = ENGINE_MODULES):
    patched = []

    def wrap(owner, name):
        original = getattr(owner, name)

        def checked(*args, **kwargs):
            frame = sys._getframe(1)
            module = frame.f_globals.get("__name__", "")
            if _guarded(module, modules):
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
