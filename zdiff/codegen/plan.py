"""Kernel plans: which kernel instances a spec needs, with their compile-time constants.

A plan is everything the template needs and nothing else, so the rendered source is a
pure function of (template, plan, spec hash): compiling the same spec twice gives
byte-identical files.

Each kernel family lives in `codegen/families/<family>.py` and provides
- `plans(spec, dtype, target) -> list[KernelPlan]`: its instances for a spec and target, with
  the default launch config of every entry point (see `codegen/launch.py`);
- `config_space(plan, kernel, target) -> list[dict]`: the configs autotuning may try for one
  entry point on one target (AMD and NVIDIA spaces differ);
- `buckets(plan, kernel) -> list[int]`: the shape buckets autotuning covers for that entry point
  (rows for norms, tokens for MoE, keys per sequence for attention). Host code in the generated
  module computes the same bucket quantity at launch and calls
  `pick_config(TABLES, kernel, bucket, CONFIGS[kernel])` (`codegen/launch.py`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from ..spec import Spec

FAMILY_MODULES = ("norms", "attention", "cca", "moe")
DTYPE_PTR = {"bf16": "*bf16", "fp32": "*fp32", "fp16": "*fp16"}


@dataclass(frozen=True)
class KernelPlan:
    name: str  # module name, e.g. rmsnorm_d2048; kernels inside are <name>_fwd, <name>_bwd, ...
    family: str  # which codegen/families module planned it
    template: str  # file in zdiff/templates
    constants: dict = field(default_factory=dict)  # rendered into the source (shapes, pattern structure)
    configs: dict = field(default_factory=dict)  # entry point -> default launch config for the target


def family_module(family: str):
    return importlib.import_module(f"{__package__}.families.{family}")


def plan_kernels(spec: Spec, dtype: str, target: str = "cpu") -> list[KernelPlan]:
    """Every kernel instance of a spec for one target, family by family."""
    return [plan for family in FAMILY_MODULES for plan in family_module(family).plans(spec, dtype, target)]
