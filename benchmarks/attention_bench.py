"""TiDAR attention on a GPU: bf16 correctness, then decode-layout timings against SDPA.

    PYTHONPATH=. python benchmarks/attention_bench.py            # GPU
    TRITON_INTERPRET=1 python benchmarks/attention_bench.py --smoke

Checks: every layout's kernel in bf16 against the fp64 reference, next to the error of the same
computation done by SDPA in bf16 (the yardstick for "as accurate as bf16 allows"); the training
backward likewise. Timings (triton.testing.do_bench, median): the decode layout with ZAYA1-8B heads
(8 query / 2 KV heads of 128) at batch 1, 8, 32, context 4k and 32k, P = 3 and 16 proposal blocks of
16 rows after 16 verify rows, against `F.scaled_dot_product_attention` with the equivalent boolean
mask; achieved HBM bandwidth counts the K/V cache read once plus Q and O.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zdiff.codegen.families.attention import attention_plan  # noqa: E402
from zdiff.codegen.render import load_module, render  # noqa: E402
from zdiff.pattern import BatchLayout, decode_pattern  # noqa: E402
from zdiff.runtime.attention import attention_reference  # noqa: E402
from zdiff.spec import load_spec  # noqa: E402

BLOCK = 16


def module(layout: str, levels: tuple[int, ...], target: str, head_dim=128, group=4, hkv=2):
    plan = attention_plan(layout, group, hkv, head_dim, BLOCK, levels, "bf16", target)
    path = Path(tempfile.mkdtemp()) / f"{plan.name}.py"
    path.write_text(render(plan, load_spec("zaya1-8b")))
    return load_module(path, f"{plan.name}_{len(levels)}_{target}")


def sdpa(q, k, v, visible, scale):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_mask=visible[:, None], scale=scale, enable_gqa=True).transpose(1, 2)


def decode_case(batch, context, proposals, device, dtype, slots=None):
    """A decode step: 15 drafts (16 verify rows) and `proposals` blocks, cache of `context` keys."""
    levels = tuple(range(proposals))  # proposals <= 16: levels 0..P-1 of the 15 drafts
    pattern = decode_pattern(context, 15, BLOCK, levels)
    layout = BatchLayout.of_patterns([pattern] * batch, BLOCK)
    T, slots = layout.rows[0], slots or context
    gen = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)
    q, k, v = rnd(batch, T, 8, 128), rnd(batch, T, 2, 128), rnd(batch, T, 2, 128)
    kc, vc = rnd(batch, slots, 2, 128), rnd(batch, slots, 2, 128)
    return layout, levels, q, k, v, kc, vc


def check(device, target, smoke, results) -> bool:
    ok = True
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    context = 40 if smoke else 1000
    layout, levels, q, k, v, kc, vc = decode_case(2, context, 3, device, dtype)
    m = module("decode", levels, target)
    visible = layout.dense_visible(layout.rows[0], context).to(device)
    scale = 128 ** -0.5
    kk, vv = torch.cat([kc, k], 1), torch.cat([vc, v], 1)
    ref = attention_reference(q.double(), kk.double(), vv.double(), visible, scale)
    for splits in (1, 4):
        out, _ = m.attention_forward(q, k, v, *layout.tensors(device), scale, kc, vc, splits=splits)
        err = (out.double() - ref).abs().max().item()
        base = (sdpa(q, kk, vv, visible, scale).double() - ref).abs().max().item()
        results["checks"][f"attention_decode_splits{splits}"] = {"max_err": err, "sdpa_bf16_max_err": base}
        ok &= err <= 2 * base + 1e-6
    # training layout, forward and backward
    S = 24 if smoke else 1000
    train = module("training", (), target)
    layout = BatchLayout.training(2, S, BLOCK)
    T = layout.rows[0]
    gen = torch.Generator(device=device).manual_seed(1)
    leaves = [torch.randn(2, T, h, 128, generator=gen, device=device, dtype=dtype).requires_grad_() for h in (8, 2, 2)]
    visible = layout.dense_visible(T).to(device)
    out = train.tidar_attention(*leaves, None, *layout.tensors(device)[1:], scale)
    do = torch.randn(out.shape, generator=gen, device=device, dtype=dtype)
    grads = torch.autograd.grad(out, leaves, do)
    leaves64 = [x.detach().double().requires_grad_() for x in leaves]
    ref = attention_reference(*leaves64, visible, scale)
    ref_grads = torch.autograd.grad(ref, leaves64, do.double())
    bf = sdpa(*leaves, visible, scale)
    bf_grads = torch.autograd.grad(bf, leaves, do)
    for name, got, base, want in zip(("out", "dq", "dk", "dv"), (out, *grads), (bf, *bf_grads), (ref, *ref_grads)):
        err, base_err = (got.double() - want).abs().max().item(), (base.double() - want).abs().max().item()
        results["checks"][f"attention_training_{name}"] = {"max_err": err, "sdpa_bf16_max_err": base_err}
        ok &= err <= 2 * base_err + 1e-6
    return ok


def time_decode(device, target, smoke, results) -> None:
    cases = [(1, 64, 3)] if smoke else [(b, c, p) for b in (1, 8, 32) for c in (4096, 32768) for p in (3, 16)]
    modules = {}
    for batch, context, proposals in cases:
        dtype = torch.bfloat16 if device != "cpu" else torch.float32
        layout, levels, q, k, v, kc, vc = decode_case(batch, context, proposals, device, dtype)
        m = modules.setdefault(proposals, module("decode", levels, target))
        scale = 128 ** -0.5
        lengths = layout.tensors(device)
        ms = bench(lambda: m.attention_forward(q, k, v, *lengths, scale, kc, vc), smoke)
        kk, vv = torch.cat([kc, k], 1), torch.cat([vc, v], 1)
        visible = layout.dense_visible(layout.rows[0], context).to(device)
        ms_sdpa = bench(lambda: sdpa(q, kk, vv, visible, scale), smoke)
        moved = (kc.numel() + vc.numel() + k.numel() + v.numel() + 2 * q.numel()) * q.element_size()
        results["timings"].append({
            "kernel": "attention_decode zdiff", "batch": batch, "context": context, "proposals": proposals,
            "rows": layout.rows[0], "ms": ms, "GB/s": moved / (ms * 1e-3) / 1e9 if ms == ms else None,
            "sdpa_ms": ms_sdpa, "speedup_vs_sdpa": ms_sdpa / ms if ms == ms else None})


def bench(fn, smoke: bool) -> float:
    if smoke:
        fn()
        return float("nan")
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def run(device, smoke: bool, results: dict) -> bool:
    results.setdefault("checks", {})
    results.setdefault("timings", [])
    target = "cpu" if device == "cpu" else ("mi300x" if torch.version.hip else "h100")
    ok = check(device, target, smoke, results)
    time_decode(device, target, smoke, results)
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    results = {}
    ok = run("cuda" if torch.cuda.is_available() else "cpu", args.smoke, results)
    print(results)
    sys.exit(0 if ok else 1)
