"""Kernel plans: which kernel instances a spec needs, with their compile-time constants.

A plan is everything the template needs and nothing else, so the rendered source is a
pure function of (template, plan, spec hash): compiling the same spec twice gives
byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import triton

from ..spec import Spec

TEMPLATE_OF = {"rmsnorm": "rmsnorm.py.jinja", "residual_rmsnorm": "residual_rmsnorm.py.jinja"}


@dataclass(frozen=True)
class KernelPlan:
    name: str  # module and kernel name, e.g. rmsnorm_d2048
    family: str  # template family
    constants: dict = field(default_factory=dict)  # rendered into the source (constexprs)
    num_warps: int = 4

    @property
    def template(self) -> str:
        return TEMPLATE_OF[self.family]


def plan_kernels(spec: Spec, dtype: str) -> list[KernelPlan]:
    """The kernel instances of a spec. Today: RMSNorm for every distinct normalised width, and
    the residual-scaling update fused with the following RMSNorm when the spec scales residuals."""
    m = spec.model
    widths = {m.hidden_size}
    if m.moe.router.kind == "zaya_mlp":
        widths.add(m.moe.router.hidden_size)
    if m.attention.qk_norm == "rms":
        widths.add(m.attention.head_dim)
    ptr = {"bf16": "*bf16", "fp32": "*fp32", "fp16": "*fp16"}[dtype]
    plans = []
    for d in sorted(widths):
        block = triton.next_power_of_2(d)
        plans.append(KernelPlan(
            name=f"rmsnorm_d{d}", family="rmsnorm",
            constants={"D": d, "BLOCK_D": block, "ROWS": 16, "ptr": ptr, "dtype": dtype},
            num_warps=4 if block <= 1024 else 8,
        ))
    if m.residual_scaling:
        block = triton.next_power_of_2(m.hidden_size)
        plans.append(KernelPlan(
            name=f"residual_rmsnorm_d{m.hidden_size}", family="residual_rmsnorm",
            constants={"D": m.hidden_size, "BLOCK_D": block, "ROWS": 16, "ptr": ptr, "dtype": dtype},
            num_warps=4 if block <= 1024 else 8,
        ))
    return plans
