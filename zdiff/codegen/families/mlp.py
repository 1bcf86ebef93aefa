"""The dense feed-forward's SwiGLU activation, fused: silu(gate) * up in one pass over the gate_up GEMM's output.

The two GEMMs of a dense MLP (x @ gate_up^T, a @ down^T) stay torch's vendor GEMMs (hipBLASLt / cuBLAS): at
decode a dense layer is bound by reading its weights once, which those GEMMs already do at the memory roofline,
and at training sizes they are compute-bound and tuned per architecture. What eager torch does badly is the
activation between them: chunk, silu, multiply are three kernels and two (N, I) intermediates; here they are one
kernel reading (N, 2I) and writing (N, I) (and one for the backward, which recomputes silu instead of saving it).
"""

from __future__ import annotations

import triton

from ...spec import Spec
from ...targets import TARGETS
from ..plan import DTYPE_PTR, KernelFamily, KernelPlan


def plans(spec: Spec, dtype: str, target: str) -> list[KernelPlan]:
    return [swiglu_plan(spec.model.ffn_size, dtype)] if spec.model.dense else []


def swiglu_plan(ffn_size: int, dtype: str = "fp32") -> KernelPlan:
    """One instance per feed-forward width I: the row is split into BLOCK_I columns per program."""
    name = f"swiglu_i{ffn_size}"
    block = min(1024, triton.next_power_of_2(ffn_size))
    config = {"BLOCK_I": block, "num_warps": 4}
    return KernelPlan(name=name, family="mlp", template="swiglu.py.jinja", role="dense_mlp",
                      constants={"I": ffn_size, "ptr": DTYPE_PTR[dtype], "dtype": dtype},
                      configs={f"{name}_fwd": dict(config), f"{name}_bwd": dict(config)})


def config_space(plan: KernelPlan, kernel: str, target: str) -> list[dict]:
    widest = triton.next_power_of_2(plan.constants["I"])
    blocks = [b for b in (256, 512, 1024, 2048) if b <= max(256, widest)]
    warps = [w for w in (2, 4, 8) if w <= TARGETS[target].max_warps]
    return [{"BLOCK_I": b, "num_warps": w} for b in blocks for w in warps]


def buckets(plan: KernelPlan, kernel: str) -> list[int]:
    """Rows per launch: a decode step of a small batch up to a training micro-batch."""
    return [64, 1024, 16384]


def bucket_tile(plan: KernelPlan, kernel: str):
    """One row per program along the grid's first axis."""
    return 1


FAMILY = KernelFamily("mlp", plans, config_space, buckets, bucket_tile)
