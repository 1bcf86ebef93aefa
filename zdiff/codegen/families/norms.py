"""RMSNorm per normalised width, and the residual-scaling update fused with the next RMSNorm.

One program per row (forward) keeps a whole row in registers, so the only tunable is the
number of warps; the backward's rows per program trades partial-sum traffic for parallelism.
"""

from __future__ import annotations

import triton

from ...spec import Spec
from ...targets import TARGETS
from ..plan import DTYPE_PTR, KernelFamily, KernelPlan


def _warps(block_d: int) -> int:
    return 4 if block_d <= 1024 else 8


def plans(spec: Spec, dtype: str, target: str) -> list[KernelPlan]:
    m = spec.model
    widths = {m.hidden_size}
    if m.moe is not None and m.moe.router.kind == "zaya_mlp":
        widths.add(m.moe.router.hidden_size)
    if m.attention.qk_norm == "rms":
        widths.add(m.attention.head_dim)
    kinds = [("rmsnorm", d) for d in sorted(widths)]
    if m.residual_scaling:
        kinds.append(("residual_rmsnorm", m.hidden_size))
    return [norm_plan(kind, d, dtype) for kind, d in kinds]


def norm_plan(kind: str, d: int, dtype: str = "fp32", rows: int = 16) -> KernelPlan:
    """kind: rmsnorm | residual_rmsnorm; d: normalised width."""
    block = triton.next_power_of_2(d)
    name = f"{kind}_d{d}"
    config = {"num_warps": _warps(block)}
    return KernelPlan(
        name=name, family="norms", template=f"{kind}.py.jinja", role=kind,
        constants={"D": d, "BLOCK_D": block, "ptr": DTYPE_PTR[dtype], "dtype": dtype},
        configs={f"{name}_fwd": config, f"{name}_bwd": {"ROWS": rows, **config}},
    )


def config_space(plan: KernelPlan, kernel: str, target: str) -> list[dict]:
    warps = [w for w in (2, 4, 8, 16) if w <= TARGETS[target].max_warps]
    if kernel.endswith("_bwd"):
        return [{"ROWS": rows, "num_warps": w} for rows in (4, 16, 64) for w in warps]
    return [{"num_warps": w} for w in warps]


def buckets(plan: KernelPlan, kernel: str) -> list[int]:
    """Rows per launch: one decode step of a small batch up to a training micro-batch."""
    return [64, 1024, 16384]


def bucket_tile(plan: KernelPlan, kernel: str):
    """Autotune's static score: one row per forward program, ROWS per backward program."""
    return "ROWS" if kernel.endswith("_bwd") else 1


FAMILY = KernelFamily("norms", plans, config_space, buckets, bucket_tile)
