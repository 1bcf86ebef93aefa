"""Training on a GPU, one device call: the training-layout attention alone, then whole training steps.

    PYTHONPATH=. python benchmarks/train_bench.py --out "$OUT"                 # GPU (H100 / H200 / MI300X)
    TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/train_bench.py --smoke --out DIR   # CPU: tiny shapes, logic only

(a) Training-layout attention ([x | M x S], ZAYA1-8B heads: 8 query / 2 KV heads of 128, batch 1, bf16)
    at S = 4096 and 16384, forward and forward + backward: zdiff's kernel, FlexAttention (compiled, the
    same pattern as a BlockMask) and SDPA's dense causal kernel over the same 2S rows (twice the visible
    work). TFLOP/s count the visible (query, key) pairs only: 4 D heads per pair forward, 2.5x that backward.
    The zdiff output is compared with Flex's (max abs difference, bf16).
(b) Whole training steps of ZAYA1-8B-width layers (as many as the memory formula fits in 80% of the card,
    at most 40), S = 4096, one sequence, TiDAR objective, bf16 autocast with fp32 master weights and AdamW:
    reference (backend torch) vs generated kernels (backend triton), each with and without activation
    checkpointing. Step time (median of timed steps after 2 warm-up steps that JIT-compile), clean tokens
    per second, peak memory (torch.cuda.max_memory_allocated) next to the formula's estimate, and MFU on
    useful FLOPs: 3 x (2 x active parameters + 2 x V x H per row + attention over visible pairs), against
    the card's dense bf16 peak (zdiff.autotune.targets).
Writes results.json and results.md into --out (the table goes to BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention_bench import module as attention_module  # noqa: E402

from zdiff.autotune.targets import TARGETS  # noqa: E402
from zdiff.pattern import BatchLayout  # noqa: E402
from zdiff.spec import load_spec  # noqa: E402
from zdiff.spec.counts import count_model  # noqa: E402
from zdiff.spec.validate import validate  # noqa: E402
from zdiff.targets import device_target  # noqa: E402
from zdiff.train.memory import device_capacity, estimate_training_memory  # noqa: E402
from zdiff.train.model_init import model_class, random_model  # noqa: E402
from zdiff.train.objective import Objective  # noqa: E402

BLOCK = 16
HEADS, KV_HEADS, HEAD_DIM = 8, 2, 128


def visible_pairs(S: int, b: int = BLOCK) -> int:
    """(query, key) pairs one sequence's training layout computes: clean causal, each mask block its prefix + itself."""
    pairs = S * (S + 1) // 2
    for first in range(0, S, b):
        length = min(b, S - first)
        pairs += length * (first + length)
    return pairs


def tidar_mask_mod(S: int, b: int = BLOCK):
    """The training layout as a FlexAttention mask_mod over [clean x S | masks x S]."""

    def mask_mod(batch, head, q, kv):
        q_clean, kv_clean = q < S, kv < S
        block = (q - S) // b
        return (
            (q_clean & kv_clean & (kv <= q))
            | (~q_clean & kv_clean & (kv < block * b))
            | (~q_clean & ~kv_clean & ((kv - S) // b == block))
        )

    return mask_mod


def timed(fn, smoke: bool, grads=None) -> float:
    if smoke:
        fn()
        return float("nan")
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median", grad_to_none=grads)


def attention_case(S: int, device, target: str, smoke: bool) -> list[dict]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    train = attention_module("training", (), target)
    layout = BatchLayout.training(1, S, BLOCK)
    T = layout.rows[0]
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (
        torch.randn(1, T, h, HEAD_DIM, generator=gen, device=device, dtype=dtype).requires_grad_()
        for h in (HEADS, KV_HEADS, KV_HEADS)
    )
    do = torch.randn(1, T, HEADS, HEAD_DIM, generator=gen, device=device, dtype=dtype)
    scale = HEAD_DIM**-0.5
    lengths = layout.tensors(device)[1:]
    mask = create_block_mask(tidar_mask_mod(S), None, None, T, T, device=device)
    flex = flex_attention if smoke else torch.compile(flex_attention)

    def zdiff_fwd(q, k, v):
        return train.tidar_attention(q, k, v, None, *lengths, scale)

    def flex_fwd(q, k, v):
        out = flex(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask, scale=scale, enable_gqa=True
        )
        return out.transpose(1, 2)

    def sdpa_fwd(q, k, v):
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=scale, enable_gqa=True
        )
        return out.transpose(1, 2)

    frozen = [x.detach() for x in (q, k, v)]
    difference = (zdiff_fwd(*frozen).float() - flex_fwd(*frozen).float()).abs().max().item()
    pairs = {"zdiff": visible_pairs(S), "flex": visible_pairs(S), "sdpa causal": T * (T + 1) // 2}
    flops = 4 * HEAD_DIM * HEADS
    rows = []
    for name, fwd in (("zdiff", zdiff_fwd), ("flex", flex_fwd), ("sdpa causal", sdpa_fwd)):
        ms_fwd = timed(lambda: fwd(*frozen), smoke)
        if name == "flex" and device == "cpu":  # FlexAttention has no CPU backward
            ms_both = float("nan")
        else:
            ms_both = timed(lambda: fwd(q, k, v).backward(do), smoke, grads=[q, k, v])
        rows.append(
            {
                "part": "attention",
                "kernel": name,
                "S": S,
                "rows": T,
                "fwd_ms": ms_fwd,
                "fwd_bwd_ms": ms_both,
                "fwd_tflops": flops * pairs[name] / (ms_fwd * 1e-3) / 1e12,
                "fwd_bwd_tflops": 3.5 * flops * pairs[name] / (ms_both * 1e-3) / 1e12,
                "max_abs_diff_vs_flex": difference if name == "zdiff" else None,
            }
        )
    return rows


def step_flops(spec, S: int) -> float:
    """Useful FLOPs of one TiDAR training step of one sequence (2S rows): 3x the forward."""
    model = spec.model
    counts = count_model(model)
    rows = 2 * S
    forward = rows * 2 * (counts.active_params + model.vocab_size * model.hidden_size)
    forward += (
        model.num_layers
        * 4
        * model.attention.head_dim
        * model.attention.num_heads
        * visible_pairs(S, spec.diffusion.block_size)
    )
    return 3 * forward


def layers_that_fit(spec, S: int, device) -> int:
    capacity, _ = device_capacity(device)
    fits = 1
    for layers in range(1, spec.model.num_layers + 1):
        model = dataclasses.replace(spec.model, num_layers=layers)
        estimate = estimate_training_memory(model, S, 1, "tidar", "bf16", "torch", device_type=device.type,
                                            distill=spec.diffusion.loss.distill_weight > 0)
        if estimate.total > 0.8 * capacity:
            break
        fits = layers
    return fits


def step_case(spec, S: int, backend: str, checkpointing: bool, device, smoke: bool, steps: int) -> dict:
    model = random_model(model_class(spec, backend, device), spec.model, 0, device).train()
    model.activation_checkpointing = checkpointing
    objective = Objective(spec, "tidar", S, backend)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    window = torch.randint(0, spec.model.vocab_size - 1, (1, S + 1), generator=torch.Generator().manual_seed(0)).to(
        device
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            parts = objective(model, window)
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return parts.total.detach()

    cuda = device.type == "cuda"
    for _ in range(1 if smoke else 2):  # JIT compilation of every kernel happens here
        loss = step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(1 if smoke else steps):
        start = time.perf_counter()
        loss = step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    estimate = estimate_training_memory(
        spec.model,
        S,
        1,
        "tidar",
        "bf16" if cuda else "fp32",
        backend,
        activation_checkpointing=checkpointing,
        device_type=device.type,
        distill=spec.diffusion.loss.distill_weight > 0,
    )
    peak_rate = TARGETS[device_target(device).name].nominal_tflops * 1e12 if cuda else float("nan")
    result = {
        "part": "step",
        "backend": backend,
        "activation_checkpointing": checkpointing,
        "layers": spec.model.num_layers,
        "S": S,
        "step_ms": seconds * 1e3,
        "tokens_per_s": S / seconds,
        "loss": loss.item(),
        "peak_gb": torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None,
        "formula_gb": estimate.total / 1e9,
        "mfu": step_flops(spec, S) / seconds / peak_rate,
    }
    model = optimizer = None  # free the device memory before the next case (the closure holds the cells)
    if cuda:
        torch.cuda.empty_cache()
    return result


def markdown(results: dict) -> str:
    lines = [
        f"{results['device']}, torch {results['torch']}, triton {results['triton']}, {results['date']}",
        "",
        "| attention (training layout) | S | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s "
        "| max abs diff vs Flex |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["attention"]:
        diff = "" if r["max_abs_diff_vs_flex"] is None else f"{r['max_abs_diff_vs_flex']:.2g}"
        lines.append(
            f"| {r['kernel']} | {r['S']} | {r['fwd_ms']:.3f} | {r['fwd_tflops']:.0f} | {r['fwd_bwd_ms']:.3f} | "
            f"{r['fwd_bwd_tflops']:.0f} | {diff} |"
        )
    lines += [
        "",
        "| training step | layers | S | act. ckpt | step ms | tokens/s | peak GB (formula) | MFU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["steps"]:
        if "error" in r:
            lines.append(
                f"| {r['backend']} | {r['layers']} | {r['S']} | {r['activation_checkpointing']} | {r['error']} |||"
            )
            continue
        peak = "n/a" if r["peak_gb"] is None else f"{r['peak_gb']:.1f}"
        lines.append(
            f"| {r['backend']} | {r['layers']} | {r['S']} | {r['activation_checkpointing']} | {r['step_ms']:.1f} | "
            f"{r['tokens_per_s']:.0f} | {peak} ({r['formula_gb']:.1f}) | {r['mfu']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def smoke_spec():
    """zaya1-tiny shrunk to one narrow layer: the interpreter's cost grows with every tile it runs."""
    spec = load_spec("zaya1-tiny")
    m = spec.model
    model = dataclasses.replace(
        m,
        hidden_size=32,
        num_layers=1,
        attention=dataclasses.replace(m.attention, num_heads=2, num_kv_heads=1, head_dim=16),
        moe=dataclasses.replace(
            m.moe, num_experts=3, ffn_size=32, router=dataclasses.replace(m.moe.router, hidden_size=8)
        ),
    )
    return validate(dataclasses.replace(spec, model=model))


def run(smoke: bool, out: Path, steps: int) -> dict:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    target = device_target(device).name if cuda else "cpu"
    results = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.date.today().isoformat(),
        "attention": [],
        "steps": [],
    }
    for S in (20,) if smoke else (4096, 16384):
        results["attention"] += attention_case(S, device.type, target, smoke)
    if smoke:
        spec, S = smoke_spec(), 4
    else:
        spec = load_spec("zaya1-8b")
        S = 4096
        spec = dataclasses.replace(
            spec, model=dataclasses.replace(spec.model, num_layers=layers_that_fit(spec, S, device))
        )
    for backend in ("torch", "triton"):
        for checkpointing in (False, True):
            try:
                results["steps"].append(step_case(spec, S, backend, checkpointing, device, smoke, steps))
            except torch.OutOfMemoryError as exc:  # a measurement, not a failure of the script
                results["steps"].append(
                    {
                        "part": "step",
                        "backend": backend,
                        "activation_checkpointing": checkpointing,
                        "layers": spec.model.num_layers,
                        "S": S,
                        "error": f"out of memory: {exc}"[:200],
                    }
                )
                torch.cuda.empty_cache()
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (TRITON_INTERPRET=1): logic only")
    parser.add_argument("--out", default="train-bench", help="directory for results.json and results.md")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per case")
    args = parser.parse_args()
    print(markdown(run(args.smoke, Path(args.out), args.steps)))
