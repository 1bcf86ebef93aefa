"""The host side of the generated kernel modules, in plain Python: one module per kernel family.

A rendered module (zdiff/templates/<template>.py.jinja) holds what differs per spec: constants, the default
`CONFIGS` of its target, the `TABLES` autotune fills, and the `@triton.jit` kernels. Its last lines bind a
host object of this package to itself (`HOST = RMSNormHost(sys.modules[__name__])`) and export the host's
public functions (`rms_norm = HOST.apply`). A host object holds, in this order (Liger-Kernel's op layout):
- launchers (`forward`, `backward`, ...): allocate, pick the launch config (`config=` overrides the
  table's / default), launch the module's kernels;
- the autograd entry (`apply`) over those launchers;
- `aot`: entry point -> (kernel, signature derived from its parameters, fixed constexprs);
- `bench`: entry point -> autotune's benchmark hook, which allocates inputs and returns a zero-argument
  callable running the real launcher with a config override; `bench_skipped`: entries without a hook.
The module exports them as `AOT`, `BENCH`, `BENCH_SKIPPED` (codegen/plan.py's `KernelModule`).
"""

from __future__ import annotations

import torch

from ..launch import pick_config
from ..plan import DTYPE_PTR

TORCH_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class ModuleHost:
    """What every host reads of its rendered module: the instance name (entry points are `<NAME>_<suffix>`,
    named like their kernel), the element type and the launch configs."""

    def __init__(self, module):
        self.module = module
        self.name = module.NAME
        self.pointer = DTYPE_PTR[module.DTYPE]  # the AOT type of a tensor argument left unnamed
        self.dtype = TORCH_DTYPE[module.DTYPE]  # the benchmark hooks' tensors
        self.bench_skipped: dict[str, str] = {}

    def kernel(self, suffix: str):
        """The module's `@triton.jit` kernel `<NAME>_<suffix>`."""
        return getattr(self.module, f"{self.name}_{suffix}")

    def config(self, entry: str, bucket: int, override: dict | None = None) -> dict:
        """`override`, else the tuned config of the nearest bucket, else the module's default."""
        if override is not None:
            return override
        return pick_config(self.module.TABLES, entry, bucket, self.module.CONFIGS[entry])
