"""CCA (ZAYA1's compressed convolutional attention): the q/k/v assembly of a CCGQA layer as kernels.

One kernel instance per attention shape. Given this pass's projected [q|k] rows (and, with a
decode cache, the committed state rows), the predecessors and the layer's parameters, it runs
the two causal convolutions along the predecessor chain, the q/k residual paths, the L2 QK
norm with the key temperature, partial RoPE, and assembles v from the current and delayed
value halves. The dense projections stay torch matmuls.

Entry points: `<name>_fwd` and `<name>_bwd` (one program per (row tile, head), plus one per
row tile for the values), `<name>_bwd_weight` (grouped-conv weight gradient, split over rows).
GQA layers (kind "gqa") get no plan here: their QK norm and RoPE run as torch ops.
"""

from __future__ import annotations

from ...errors import ZdiffError
from ...spec import Spec
from ...spec.schema import AttentionSpec
from ...targets import TARGETS
from ..plan import DTYPE_PTR, KernelFamily, KernelPlan


def plans(spec: Spec, dtype: str, target: str) -> list[KernelPlan]:
    a = spec.model.attention
    if a.kind != "ccgqa":
        return []
    return [cca_plan(a, dtype, target)]


def plan_name(a: AttentionSpec) -> str:
    cca = a.cca
    shape = f"q{a.num_heads}k{a.num_kv_heads}_d{a.head_dim}_r{a.rotary_dim}"
    return f"cca_{shape}_k{cca.depthwise_kernel}{cca.grouped_kernel}"


def _check(a: AttentionSpec) -> None:
    d = a.head_dim
    if d < 16 or d & (d - 1):
        raise ZdiffError(f"the CCA kernel needs head_dim a power of two >= 16, got {d} (model.attention.head_dim)")
    rd = a.rotary_dim
    if rd < 2 or d % rd or rd & (rd - 1):
        raise ZdiffError(f"the CCA kernel needs a rotary_dim that is a power of two >= 2 dividing head_dim {d}, "
                         f"got {rd} (model.attention.rope_fraction)")
    if (a.num_kv_heads * d) % 2:
        raise ZdiffError(f"CCGQA splits the value width in halves; num_kv_heads * head_dim = {a.num_kv_heads * d} "
                         "is odd")
    if a.qk_norm != "l2":
        raise ZdiffError(f"the CCA kernel fuses the L2 QK norm; got qk_norm {a.qk_norm!r} (model.attention.qk_norm)")


def default_configs(name: str, head_dim: int, target: str) -> dict:
    """Default launch config per entry point. Rows per program stay small: decode passes are short."""
    hip = TARGETS[target].is_amd
    big = head_dim >= 128
    rows = {"BLOCK_T": 16 if big else 32, "BLOCK_K": 32 if big else 16, "num_warps": 8 if big else 4, "num_stages": 1}
    weight = {"BLOCK_T": 32, "BLOCK_O": 32 if big else head_dim, "SPLIT": 16, "num_warps": 4, "num_stages": 1}
    bwd = dict(rows)
    if hip:
        rows = {**rows, "waves_per_eu": 0, "matrix_instr_nonkdim": 16}
        # the backward keeps more live state than the forward: 4 wave64s per program
        bwd = {**rows, "num_warps": 4}
        weight = {**weight, "waves_per_eu": 0, "matrix_instr_nonkdim": 16}
    return {f"{name}_fwd": rows, f"{name}_fwd_cached": dict(rows), f"{name}_bwd": bwd,
            f"{name}_bwd_weight": weight}


def cca_plan(a: AttentionSpec, dtype: str = "fp32", target: str = "cpu", configs: dict | None = None) -> KernelPlan:
    """The kernel instance for one CCGQA attention shape; `configs` overrides the default launch configs."""
    _check(a)
    name = plan_name(a)
    dv = a.num_kv_heads * a.head_dim // 2
    constants = {
        "HQ": a.num_heads, "HKV": a.num_kv_heads, "D": a.head_dim, "RD": a.rotary_dim,
        "K0": a.cca.depthwise_kernel, "K1": a.cca.grouped_kernel, "DV": dv,
        "BLOCK_DV": 1 << (dv - 1).bit_length(), "ptr": DTYPE_PTR[dtype], "dtype": dtype,
    }
    return KernelPlan(name=name, family="cca", template="cca.py.jinja", role="cca", constants=constants,
                      configs=configs or default_configs(name, a.head_dim, target))


def config_space(plan: KernelPlan, kernel: str, target: str) -> list[dict]:
    hip = TARGETS[target].is_amd
    warps = [4, 8] if hip else [4, 8, 16]
    amd = [{"waves_per_eu": w, "matrix_instr_nonkdim": 16} for w in (0, 1, 2)] if hip else [{}]
    stages = [1] if hip else [1, 2]
    if kernel.endswith("_bwd_weight"):
        d = plan.constants["D"]
        return [{"BLOCK_T": t, "BLOCK_O": o, "SPLIT": s, "num_warps": w, "num_stages": st, **extra}
                for t in (32, 64) for o in sorted({32, min(64, d)}) for s in (8, 16, 64)
                for w in warps for st in stages for extra in amd]
    return [{"BLOCK_T": t, "BLOCK_K": k, "num_warps": w, "num_stages": st, **extra}
            for t in (16, 32, 64) for k in (16, 32, 64) if k <= plan.constants["D"]
            for w in warps for st in stages for extra in amd]


def buckets(plan: KernelPlan, kernel: str) -> list[int]:
    """Rows per launch (batch x this pass's rows): one decode step of a small batch up to a training micro-batch."""
    return [64, 1024, 16384]


def bucket_tile(plan: KernelPlan, kernel: str):
    """Autotune's static score: rows per program are BLOCK_T; the weight gradient loops over the rows in
    each of its SPLIT programs (no grid dimension covers the bucket)."""
    return None if kernel.endswith("_bwd_weight") else "BLOCK_T"


def bench_shape(kernel: str, bucket: int, state: int, batch: int | None = None) -> dict:
    """Layout of the autotune benchmark of `bucket` rows, used by the template's BENCH hooks: training /
    prefill as sequences of up to 1024 rows; a cached (decode) pass as min(bucket, 64) sequences of
    bucket // 64 rows after `state` committed rows. `batch` overrides the number of sequences."""
    if kernel.endswith("_fwd_cached"):
        batch = batch or min(bucket, 64)
        return {"batch": batch, "rows": max(1, bucket // batch), "state": state}
    batch = batch or max(1, bucket // min(bucket, 1024))
    return {"batch": batch, "rows": max(1, bucket // batch), "state": 0}


FAMILY = KernelFamily("cca", plans, config_space, buckets, bucket_tile)
