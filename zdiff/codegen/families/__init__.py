"""The kernel families, by name: the registry codegen and autotune iterate over."""

from __future__ import annotations

from ...spec import Spec
from ..plan import KernelFamily, KernelPlan
from . import attention, cca, mlp, moe, norms, rope

FAMILIES: dict[str, KernelFamily] = {f.name: f for f in (norms.FAMILY, attention.FAMILY, cca.FAMILY, moe.FAMILY,
                                                                    mlp.FAMILY, rope.FAMILY)}


def family(name: str) -> KernelFamily:
    return FAMILIES[name]


def plan_kernels(spec: Spec, dtype: str, target: str = "cpu") -> list[KernelPlan]:
    """Every kernel instance of a spec for one target, family by family."""
    return [plan for f in FAMILIES.values() for plan in f.plans(spec, dtype, target)]
