"""Mixture of experts: the router (its tail: softmax, balancing bias, top-k, weights; for ZAYA1's MLP router
the whole router at inference) and the grouped-GEMM experts.

Two kernel instances per spec (every MoE layer of a model shares the shapes):
- `moe_router_c{C}_k{K}`: template moe_router.py.jinja, public `route(router, x, state)`. Entry points
  `_fwd` / `_bwd` (the tail, one token per program), `_restrict` (the tail under TiDAR's draft-row expert
  budget) and, for a zaya_mlp router, `_mlp_fwd` (down_proj,
  state, RMSNorm, fc1, fc2, out_proj and the tail for BLOCK_M tokens per program, no gradient);
- `moe_experts_e{E}_h{H}_i{I}_k{K}`: template moe_experts.py.jinja, public `experts_forward(experts, x, routing)`.

The experts have two paths: training / prefill sized groups (BLOCK_M 64) and a small-M path (BLOCK_M 16)
for decode-sized groups, chosen at launch from the average group size. Entry points (CONFIGS keys):
`_gate_up`, `_gate_up_small`, `_down`, `_down_small` (forward), `_down_bwd`, `_dx_bwd`, `_ddown_bwd`,
`_dgate_up_bwd` (backward), and `_dispatch` (the single-program sort / pad of the slots). The gate_up
config's BLOCK_M is the dispatch tile of its path.
"""

from __future__ import annotations

import triton

from ...spec import Spec
from ...targets import TARGETS
from ..plan import DTYPE_PTR, KernelFamily, KernelPlan

SMALL_TOKENS_PER_EXPERT = 16  # average routed tokens per expert at or below which the small-M path runs


def router_name(spec: Spec) -> str:
    moe = spec.model.moe
    return f"moe_router_c{moe.router_classes}_k{moe.top_k}"


def experts_name(spec: Spec) -> str:
    m = spec.model
    return f"moe_experts_e{m.moe.num_experts}_h{m.hidden_size}_i{m.moe.ffn_size}_k{m.moe.top_k}"


def plans(spec: Spec, dtype: str, target: str) -> list[KernelPlan]:
    if spec.model.dense:
        return []
    return [router_plan(spec, dtype, target), experts_plan(spec, dtype, target)]


def router_plan(spec: Spec, dtype: str = "fp32", target: str = "cpu") -> KernelPlan:
    moe = spec.model.moe
    name = router_name(spec)
    constants = {"KIND": moe.router.kind, "C": moe.router_classes, "E": moe.num_experts, "TOP_K": moe.top_k,
                 "BLOCK_C": max(16, triton.next_power_of_2(moe.router_classes)),
                 "BLOCK_K": triton.next_power_of_2(moe.top_k),
                 "PROBS_FP32": moe.router.kind == "linear", "NORMALIZE": moe.router.normalize_top_k,
                 "SKIP_EXPERT": moe.skip_expert, "UPDATE_RATE": moe.balancing_bias.update_rate,
                 "ptr": DTYPE_PTR[dtype], "dtype": dtype}
    config = {"num_warps": 1}  # one row of a few classes per program: one warp / wave
    configs = {f"{name}_fwd": dict(config), f"{name}_bwd": dict(config), f"{name}_restrict": dict(config)}
    if moe.router.kind == "zaya_mlp":
        R = moe.router.hidden_size
        constants.update(H=spec.model.hidden_size, R=R, BLOCK_R=max(16, triton.next_power_of_2(R)))
        configs[f"{name}_mlp_fwd"] = _mlp_router_config(target)
    return KernelPlan(name=name, family="moe", template="moe_router.py.jinja", role="moe_router", constants=constants,
                      configs=configs)


def _mlp_router_config(target: str) -> dict:
    """The fused MLP router's default: 16 rows per program (a decode step has few tokens), the down_proj's
    input channels and fc1's outputs in chunks so that a (BLOCK_R, chunk) weight tile, not the whole
    R x R matrix, is live (R = 256 at ZAYA1-8B); AMD's 64 KiB LDS takes the smaller input chunk."""
    if target == "cpu":
        return {"BLOCK_M": 16, "BLOCK_H": 32, "BLOCK_J": 16, "num_warps": 4}
    block_h = 32 if TARGETS[target].is_amd else 64
    return {"BLOCK_M": 16, "BLOCK_H": block_h, "BLOCK_J": 32, "num_warps": 4, "num_stages": 2}


def _default_configs(target: str) -> dict:
    """Default config per experts entry point suffix, for a target."""
    if TARGETS[target].is_amd:
        amd = {"waves_per_eu": 2, "matrix_instr_nonkdim": 16, "kpack": max(TARGETS[target].kpacks)}
        big = {"num_warps": 4, "num_stages": 2, **amd}
        return {
            "gate_up": {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, **big},
            "gate_up_small": {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, **big},
            "down": {"BLOCK_N": 64, "BLOCK_K": 64, **big},
            "down_small": {"BLOCK_N": 64, "BLOCK_K": 64, **big},
            "down_bwd": {"BLOCK_N": 64, "BLOCK_K": 64, **big},
            "dx_bwd": {"BLOCK_N": 64, "BLOCK_K": 64, **big},
            "ddown_bwd": {"BLOCK_P": 64, "BLOCK_Q": 64, "BLOCK_S": 64, **big},
            "dgate_up_bwd": {"BLOCK_P": 64, "BLOCK_Q": 64, "BLOCK_S": 64, **big},
        }
    if TARGETS[target].backend == "cuda":
        return {
            "gate_up": {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 8, "num_stages": 4},
            "gate_up_small": {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 4},
            "down": {"BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 4},
            "down_small": {"BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 4},
            "down_bwd": {"BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3},
            "dx_bwd": {"BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3},
            "ddown_bwd": {"BLOCK_P": 64, "BLOCK_Q": 64, "BLOCK_S": 64, "num_warps": 4, "num_stages": 3},
            "dgate_up_bwd": {"BLOCK_P": 64, "BLOCK_Q": 64, "BLOCK_S": 64, "num_warps": 4, "num_stages": 3},
        }
    # cpu (interpreter): the smallest tiles tl.dot accepts keep the interpreter fast
    small = {"num_warps": 4}
    return {
        "gate_up": {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, **small},
        "gate_up_small": {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, **small},
        "down": {"BLOCK_N": 32, "BLOCK_K": 32, **small},
        "down_small": {"BLOCK_N": 16, "BLOCK_K": 16, **small},
        "down_bwd": {"BLOCK_N": 32, "BLOCK_K": 32, **small},
        "dx_bwd": {"BLOCK_N": 32, "BLOCK_K": 32, **small},
        "ddown_bwd": {"BLOCK_P": 32, "BLOCK_Q": 32, "BLOCK_S": 16, **small},
        "dgate_up_bwd": {"BLOCK_P": 32, "BLOCK_Q": 32, "BLOCK_S": 16, **small},
    }


def experts_plan(spec: Spec, dtype: str = "fp32", target: str = "cpu") -> KernelPlan:
    m = spec.model
    name = experts_name(spec)
    constants = {"E": m.moe.num_experts, "H": m.hidden_size, "I": m.moe.ffn_size, "TOP_K": m.moe.top_k,
                 "SMALL_TOKENS_PER_EXPERT": SMALL_TOKENS_PER_EXPERT,
                 "GROUPS_P2": triton.next_power_of_2(m.moe.num_experts + 1), "ptr": DTYPE_PTR[dtype], "dtype": dtype}
    configs = {f"{name}_{suffix}": config for suffix, config in _default_configs(target).items()}
    configs[f"{name}_dispatch"] = {"CHUNK": 64 if target == "cpu" else 256, "num_warps": 4}
    return KernelPlan(name=name, family="moe", template="moe_experts.py.jinja", role="moe_experts",
                      constants=constants, configs=configs)


def _keep(config: dict, target: str) -> bool:
    """Static pruning: operand tiles of one pipeline stage must fit the LDS / shared memory (2-byte elements)."""
    m = config.get("BLOCK_M", config.get("BLOCK_P", 64))
    n = config.get("BLOCK_N", config.get("BLOCK_Q", 64))
    k = config.get("BLOCK_K", config.get("BLOCK_S", 64))
    amd = TARGETS[target].is_amd
    if amd and config.get("matrix_instr_nonkdim") == 32 and min(m, n) < 32:
        return False  # 32x32 MFMA needs 32-wide tiles
    stage_bytes = 2 * (m * k + 2 * k * n)  # gate_up loads two B tiles
    return stage_bytes * max(1, config.get("num_stages", 2) - (0 if amd else 1)) <= TARGETS[target].shared_bytes


def config_space(plan: KernelPlan, kernel: str, target: str) -> list[dict]:
    suffix = kernel[len(plan.name) + 1:]
    if plan.role == "moe_router" and suffix == "mlp_fwd":
        return [{"BLOCK_M": m, "BLOCK_H": h, "BLOCK_J": j, "num_warps": w, "num_stages": s}
                for m in (16, 32) for h in (32, 64) for j in (16, 32) for w in (4, 8) for s in (1, 2)]
    if plan.role == "moe_router":
        return [{"num_warps": w} for w in (1, 2, 4)]
    if suffix == "dispatch":
        return [{"CHUNK": c, "num_warps": w} for c in (128, 256, 512) for w in (4, 8)]
    # gate_up's BLOCK_M is the dispatch tile of its whole path (down and the backward reuse it), and
    # a static ranking cannot weigh its weight re-reads: it stays at the plan's default until a
    # measured run can compare whole paths
    default = plan.configs.get(kernel, {})
    block_ms = [default["BLOCK_M"]] if "BLOCK_M" in default else [16]
    if TARGETS[target].is_amd:
        kpacks = TARGETS[target].kpacks
        options = [{"num_warps": w, "num_stages": s, "waves_per_eu": wpe, "matrix_instr_nonkdim": nk, "kpack": kp}
                   for w in (4, 8) for s in (2, 3) for wpe in (0, 1, 2) for nk in (16, 32) for kp in kpacks]
    else:
        options = [{"num_warps": w, "num_stages": s} for w in (4, 8) for s in (3, 4, 5)]
    if suffix in ("ddown_bwd", "dgate_up_bwd"):
        tiles = [{"BLOCK_P": p, "BLOCK_Q": q, "BLOCK_S": s} for p in (64, 128) for q in (64, 128) for s in (32, 64)]
    elif suffix.startswith("gate_up"):
        tiles = [{"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k} for m in block_ms for n in (32, 64, 128) for k in (64, 128)]
    else:  # BLOCK_M is the dispatch tile, set by the gate_up config of the path
        tiles = [{"BLOCK_N": n, "BLOCK_K": k} for n in (32, 64, 128) for k in (64, 128)]
    space = [{**t, **o} for t in tiles for o in options]
    return [c for c in space if _keep(c, target)]


def buckets(plan: KernelPlan, kernel: str) -> list[int]:
    """Routed tokens (N * top_k) per launch for the experts; tokens for the router."""
    if kernel.endswith("_small"):
        return [1, 16, 64, 256]
    return [1, 16, 64, 512, 4096, 16384]


def bucket_tile(plan: KernelPlan, kernel: str):
    """Autotune's static score: the rows (routed slots) one program covers. The router's tail runs one token
    per program, the fused MLP router BLOCK_M; gate_up tiles them by its BLOCK_M; the GEMMs after it by the
    path's dispatch tile (a constant of the AOT entry, the default gate_up BLOCK_M); the weight gradients and
    the dispatch loop over the slots inside their programs (None)."""
    if plan.role == "moe_router":
        return "BLOCK_M" if kernel.endswith("_mlp_fwd") else 1
    suffix = kernel[len(plan.name) + 1:]
    if suffix.startswith("gate_up"):
        return "BLOCK_M"
    if suffix in ("dispatch", "ddown_bwd", "dgate_up_bwd"):
        return None
    path = "gate_up_small" if suffix.endswith("_small") else "gate_up"
    return int(plan.configs[f"{plan.name}_{path}"]["BLOCK_M"])


FAMILY = KernelFamily("moe", plans, config_space, buckets, bucket_tile)
