"""Kernel plans: which kernel instances a spec needs, with their compile-time constants.

A plan is everything the template needs and nothing else, so the rendered source is a
pure function of (template, plan, spec hash): compiling the same spec twice gives
byte-identical files.

Each kernel family lives in `codegen/families/<family>.py` and exports one `KernelFamily`
(`FAMILY`); `codegen/families/__init__.py` is the registry. The interface is typed and complete
(every family gives every function; nobody probes for optional hooks):
- `plans(spec, dtype, target) -> list[KernelPlan]`: its instances for a spec and target, with
  the default launch config of every entry point (see `codegen/launch.py`);
- `config_space(plan, kernel, target) -> list[dict]`: the configs autotuning may try for one
  entry point on one target (AMD and NVIDIA spaces differ);
- `buckets(plan, kernel) -> list[int]`: the shape buckets autotuning covers for that entry point
  (rows for norms, tokens for MoE, keys per sequence for attention). Host code in the generated
  module computes the same bucket quantity at launch and calls
  `pick_config(TABLES, kernel, bucket, CONFIGS[kernel])` (`codegen/launch.py`);
- `bucket_tile(plan, kernel)`: the config key (or fixed int) whose tile covers the bucket in one
  program, None when the bucket is a loop inside one program (autotune's static score);
- `bucket_loop(plan, kernel)`: is the bucket a loop of tiles inside each program (attention keys)?
- `tuned(plan, kernel)`: does the host code read this entry's table at all?
The plan's `role` says what a kernel module is for (the generated model wires modules by role).

A rendered module holds constants, `CONFIGS` / `TABLES` and the `@triton.jit` kernels; its last lines bind
the family's host code (`codegen/host/<family>.py`: launchers, autograd, AOT signatures, benchmark hooks) to
itself as `HOST` and export it. Autotune, AOT compilation and `zdiff compile` read a module only through
`KernelModule`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..spec import Spec

DTYPE_PTR = {"bf16": "*bf16", "fp32": "*fp32", "fp16": "*fp16"}
ROLES = ("rmsnorm", "residual_rmsnorm", "attention", "cca", "moe_router", "moe_experts", "dense_mlp", "qk_rope")


@dataclass(frozen=True)
class KernelPlan:
    name: str  # module name, e.g. rmsnorm_d2048; kernels inside are <name>_fwd, <name>_bwd, ...
    family: str  # which codegen/families module planned it
    template: str  # file in zdiff/templates
    role: str  # one of ROLES: what the generated model uses the module for
    constants: dict = field(default_factory=dict)  # rendered into the source (shapes, pattern structure)
    configs: dict = field(default_factory=dict)  # entry point -> default launch config for the target

    def __post_init__(self):
        assert self.role in ROLES, f"unknown kernel role {self.role!r}"


def _always(plan: KernelPlan, kernel: str) -> bool:
    return True


def _never(plan: KernelPlan, kernel: str) -> bool:
    return False


@dataclass(frozen=True)
class KernelFamily:
    """What a kernel family tells codegen and autotune (see the module docstring)."""

    name: str
    plans: Callable[[Spec, str, str], list[KernelPlan]]
    config_space: Callable[[KernelPlan, str, str], list[dict]]
    buckets: Callable[[KernelPlan, str], list[int]]
    bucket_tile: Callable[[KernelPlan, str], str | int | None]
    bucket_loop: Callable[[KernelPlan, str], bool] = _never
    tuned: Callable[[KernelPlan, str], bool] = _always


class KernelModule(Protocol):
    """What codegen, autotune and AOT compilation read of a rendered kernel module (the names its template
    defines; the host code of codegen/host/<family>.py provides AOT and BENCH through the module's HOST)."""

    CONFIGS: dict[str, dict]  # entry point -> default launch config for the target
    TABLES: dict[str, dict]  # entry point -> {bucket: config}, filled from autotune tables at load
    # entry point -> (kernel, AOT signature derived from its parameters, fixed constexprs)
    AOT: dict[str, tuple]
    # entry point -> hook(bucket, config, device="cuda", ...) -> zero-argument callable that runs the
    # entry's real host launcher with `config` instead of the table's (autotune's measured path)
    BENCH: dict[str, Callable]
    BENCH_SKIPPED: dict[str, str]  # entry point -> why it has no hook
