"""q/k RMSNorm (Qwen3) and RoPE of plain GQA layers in one kernel at inference (CCGQA's RoPE is in its CCA kernel).

Eager torch spends a RoPE on 6 elementwise kernels per tensor (two slices' cat, neg, two muls, add) after the
q/k norm kernel; here a decode layer's q and k each take one launch, and the norm's output never leaves
registers. Training keeps the differentiable kernels (no backward here).
"""

from __future__ import annotations

import triton

from ...spec import Spec
from ...targets import TARGETS
from ..plan import DTYPE_PTR, KernelFamily, KernelPlan


def plans(spec: Spec, dtype: str, target: str) -> list[KernelPlan]:
    a = spec.model.attention
    if a.kind != "gqa" or a.qk_norm not in ("none", "rms"):
        return []
    return [qk_rope_plan(a.head_dim, a.rotary_dim, a.qk_norm == "rms", dtype)]


def qk_rope_plan(head_dim: int, rotary_dim: int, norm: bool, dtype: str = "fp32") -> KernelPlan:
    name = f"qk_rope_d{head_dim}_r{rotary_dim}" + ("_rms" if norm else "")
    width = triton.next_power_of_2(head_dim)
    return KernelPlan(name=name, family="rope", template="qk_rope.py.jinja", role="qk_rope",
                      constants={"D": head_dim, "RD": rotary_dim, "NORM": norm, "ptr": DTYPE_PTR[dtype],
                                 "dtype": dtype},
                      configs={f"{name}_fwd": {"num_warps": 1 if width <= 128 else 2}})


def config_space(plan: KernelPlan, kernel: str, target: str) -> list[dict]:
    return [{"num_warps": w} for w in (1, 2, 4) if w <= TARGETS[target].max_warps]


def buckets(plan: KernelPlan, kernel: str) -> list[int]:
    """(token, head) rows per launch: a decode step of a small batch up to a prefill chunk."""
    return [64, 1024, 16384]


def bucket_tile(plan: KernelPlan, kernel: str):
    return 1


FAMILY = KernelFamily("rope", plans, config_space, buckets, bucket_tile)
