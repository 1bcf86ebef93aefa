"""Count what one forward launches: torch ops that run a kernel (a TorchDispatchMode that skips views, aliases and
bare allocations) and Triton kernel launches (JIT or interpreter), for the kernel-count test and NOTES.md."""

from __future__ import annotations

import contextlib
from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode

NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh", "detach",
             "_unsafe_view", "squeeze_", "unsqueeze_", "t_", "transpose_", "as_strided_", "resize_",
             "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel", "is_same_size"}


def _launches_kernel(func) -> bool:
    """Ops whose results alias an input without writing it (views) and bare allocations run no kernel."""
    if func.__name__.split(".")[0] in NO_KERNEL:
        return False
    returns = func._schema.returns
    return not any(r.alias_info is not None and not r.alias_info.is_write for r in returns)


class LaunchCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.torch_ops: Counter = Counter()
        self.triton = Counter()
        self._inside_triton = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self._inside_triton and _launches_kernel(func):
            self.torch_ops[func.__name__] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_launches(execute: bool = True):
    """with count_launches() as counter: ...  -> counter.torch_ops, counter.triton (per kernel name).

    execute=False counts Triton launches without running them (their outputs keep whatever the allocation
    held): the structure of a forward, not its values, at CPU speed under the interpreter."""
    import triton.runtime.interpreter as interpreter
    import triton.runtime.jit as jit

    counter = LaunchCounter()
    patched = []
    for cls in (jit.JITFunction, interpreter.InterpretedFunction):
        original = cls.run

        def run(self, *args, _original=original, **kwargs):
            counter.triton[getattr(self, "__name__", None) or self.fn.__name__] += 1
            if not execute:
                return None
            counter._inside_triton += 1  # the interpreter's own tensor traffic is not the model's
            try:
                return _original(self, *args, **kwargs)
            finally:
                counter._inside_triton -= 1

        cls.run = run
        patched.append((cls, original))
    try:
        with counter:
            yield counter
    finally:
        for cls, original in patched:
            cls.run = original
