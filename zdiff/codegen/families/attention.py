"""TiDAR attention: one kernel instance per layout (training, prefill, decode).

The layout's structure (block size, acceptance levels, GQA group) is compiled in; sequence
lengths, cache lengths and the number of drafts are per-sequence runtime scalars. Only the
training layout has a backward; only decode reads a KV cache (and may split it).
"""

from __future__ import annotations

import triton

from ...pattern.visibility import triton_anchor_source
from ...spec import Spec
from ...targets import TARGETS
from ..plan import DTYPE_PTR, KernelFamily, KernelPlan

LAYOUTS = ("training", "prefill", "decode")


def default_configs(name: str, layout: str, head_dim: int, target: str) -> dict:
    block_d = triton.next_power_of_2(head_dim)
    if TARGETS[target].is_amd:
        # chosen from AOT sweeps at head_dim 128 (NOTES.md): with 4 wave64s a 128-row tile spills to
        # scratch; 8 waves, one stage (the AMD stream pipeliner's LDS double buffer costs registers
        # here) and 2 waves per EU (256 VGPRs each) compile without scratch on gfx942 and gfx950
        amd = {"num_stages": 1, "waves_per_eu": 2, "matrix_instr_nonkdim": 16, "kpack": 1}
        fwd = {"BLOCK_M": 128, "BLOCK_N": 64 if block_d <= 128 else 32, "num_warps": 8, **amd}
        dq = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, **amd}
        dkdv = {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 8, **amd}
    elif target == "cpu":  # the interpreter: small tiles keep tests fast
        fwd = dq = dkdv = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
    else:
        # sm_90 at head_dim 128 (AOT sweeps, NOTES.md): the backward's larger tiles reach 255 registers
        # and a local-memory stack frame; below 128 the dk/dv tiles are too small for 8 warps (d 32: a
        # 24-byte stack frame per thread), 4 compile clean
        fwd = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3 if block_d <= 128 else 2}
        dq = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}
        dkdv = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 8 if block_d >= 128 else 4, "num_stages": 2}
    configs = {f"{name}_fwd": fwd}
    if layout == "decode":
        configs[f"{name}_fwd_split"] = fwd
        configs[f"{name}_combine"] = {"BLOCK_M": 16, "num_warps": 4, "num_stages": 1}
    if layout == "training":
        configs[f"{name}_bwd_dq"], configs[f"{name}_bwd_dkdv"] = dq, dkdv
    return configs


def attention_plan(layout: str, group: int, num_kv_heads: int, head_dim: int, block_size: int,
                   levels: tuple[int, ...], dtype: str = "fp32", target: str = "cpu") -> KernelPlan:
    # the shape is in the name (as in vLLM's MoE tables) so that autotune tables, keyed by module
    # name, never configure another model's attention
    name = f"attention_{layout}_q{group * num_kv_heads}k{num_kv_heads}_d{head_dim}_b{block_size}"
    return KernelPlan(
        name=name, family="attention", template="attention.py.jinja", role="attention",
        constants={"layout": layout, "group": group, "num_kv_heads": num_kv_heads, "head_dim": head_dim,
                   "block_d": triton.next_power_of_2(head_dim), "block_size": block_size, "levels": tuple(levels),
                   "anchor_expr": triton_anchor_source(layout, tuple(levels)), "has_cache": layout == "decode",
                   "backward": layout == "training", "ptr": DTYPE_PTR[dtype], "dtype": dtype},
        configs=default_configs(name, layout, head_dim, target),
    )


def plans(spec: Spec, dtype: str, target: str) -> list[KernelPlan]:
    a, diffusion = spec.model.attention, spec.diffusion
    return [attention_plan(layout, a.num_heads // a.num_kv_heads, a.num_kv_heads, a.head_dim, diffusion.block_size,
                           tuple(diffusion.acceptance_levels), dtype, target) for layout in LAYOUTS]


def config_space(plan: KernelPlan, kernel: str, target: str) -> list[dict]:
    """Tile shapes x warps x stages; AMD adds waves_per_eu, the MFMA shape and kpack (1 only on gfx950)."""
    if kernel.endswith("_combine"):
        return [{"BLOCK_M": m, "num_warps": w} for m in (16, 32, 64) for w in (2, 4)]
    tiles = [(m, n) for m in (32, 64, 128) for n in (32, 64, 128)]
    if TARGETS[target].is_amd:
        kpacks = TARGETS[target].kpacks
        return [{"BLOCK_M": m, "BLOCK_N": n, "num_warps": w, "num_stages": s, "waves_per_eu": wpe,
                 "matrix_instr_nonkdim": nk, "kpack": kp}
                for m, n in tiles for w in (4, 8) for s in (1, 2) for wpe in (0, 1, 2) for nk in (16, 32)
                for kp in kpacks]
    return [{"BLOCK_M": m, "BLOCK_N": n, "num_warps": w, "num_stages": s}
            for m, n in tiles for w in (4, 8) for s in (2, 3, 4)]


def buckets(plan: KernelPlan, kernel: str) -> list[int]:
    """Keys per sequence (cache + this pass's rows)."""
    return [1024, 4096, 32768]


def bucket_tile(plan: KernelPlan, kernel: str):
    """The config key tiling the bucket (keys per sequence) for autotune's static score: the key loop's
    BLOCK_N (row tiles are BLOCK_M over T * GROUP packed rows, which the bucket does not measure)."""
    return "BLOCK_M" if kernel.endswith("_combine") else "BLOCK_N"


def bucket_loop(plan: KernelPlan, kernel: str) -> bool:
    """The keys are a loop inside each program (forward, dQ), not a grid dimension (dK/dV: one program per
    key tile)."""
    return not kernel.endswith(("_bwd_dkdv", "_combine"))


def tuned(plan: KernelPlan, kernel: str) -> bool:
    """Does the host code read this entry's table? The split decode launch takes the `_fwd` config and the
    combine its CONFIGS default, so `_fwd_split` / `_combine` rows would never be used."""
    return not kernel.endswith(("_fwd_split", "_combine"))


def bench_shape(layout: str, block_size: int, levels, bucket: int, batch: int | None = None) -> dict:
    """Layout of the autotune benchmark of one bucket (keys per sequence), used by the bench hooks of
    codegen/host/attention.py:
    decode is a batch-8 step with block_size verify rows + one block per acceptance level after
    `bucket - rows` cache keys; training (clean half causal) / prefill (prompt + one mask block) hold `bucket`
    rows per sequence, max(1, 16384 // bucket) sequences. `batch` overrides the number of sequences."""
    if layout == "decode":
        rows = block_size * (1 + len(levels))
        return {"batch": batch or 8, "rows": rows, "causal_rows": block_size, "cache": max(0, bucket - rows)}
    causal = bucket // 2 if layout == "training" else max(0, bucket - block_size)
    return {"batch": batch or max(1, 16384 // bucket), "rows": bucket, "causal_rows": causal, "cache": 0}


FAMILY = KernelFamily("attention", plans, config_space, buckets, bucket_tile, bucket_loop=bucket_loop, tuned=tuned)
