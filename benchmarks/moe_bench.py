"""MoE kernels on a device: check against the float64 reference, then time the experts.

    PYTHONPATH=. python benchmarks/moe_bench.py --out "$OUT"        # on the GPU machine
    TRITON_INTERPRET=1 python benchmarks/moe_bench.py --smoke       # CPU: tiny shapes, logic only

`run(device, smoke, results)` is what benchmarks/gpu_session.py-style drivers call: it appends to
results["checks"] and results["timings"] and returns whether every check passed.

Checks (bf16 on a GPU, fp32 in smoke mode): route() against Router (choices, weights), and
experts_forward forward and all gradients against the float64 reference, judged by the relative
error norm next to the error of the reference module run in the same dtype.
Times (triton.testing.do_bench, median), ZAYA1-8B expert shapes (16 experts, hidden 2048, FFN 2048,
top-1, random uniform routing), at 1, 16, 64, 512 and 4096 tokens:
  - zdiff experts_forward (inference path), and forward + backward at the training sizes;
  - torch._grouped_mm (sort by expert, two grouped GEMMs, SwiGLU, weight, index_add), if available;
  - the per-expert loop of the reference Experts module.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zdiff.codegen.families import moe  # noqa: E402
from zdiff.codegen.render import load_module, render  # noqa: E402
from zdiff.runtime.moe import Experts, Router, Routing  # noqa: E402
from zdiff.spec import load_spec  # noqa: E402

TOKENS = (1, 16, 64, 512, 4096)


def bench(fn, smoke: bool) -> float:
    if smoke:
        fn()
        return float("nan")
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def bench_spec(smoke: bool):
    spec = load_spec("zaya1-8b")
    if not smoke:
        return spec
    m = spec.model
    router = dataclasses.replace(m.moe.router, hidden_size=16)
    small = dataclasses.replace(m.moe, num_experts=4, ffn_size=32, router=router)
    return dataclasses.replace(spec, model=dataclasses.replace(m, hidden_size=32, moe=small))


def modules(spec, dtype: str, target: str):
    out = Path(tempfile.mkdtemp())
    loaded = []
    for plan in moe.plans(spec, dtype, target):
        path = out / f"{plan.name}.py"
        path.write_text(render(plan, spec))
        loaded.append(load_module(path, plan.name))
    return loaded  # router module, experts module


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check(device, spec, router_module, experts_module, dtype, N, results) -> bool:
    m = spec.model
    gen = torch.Generator().manual_seed(0)
    ok = True
    # router: choices and weights against the reference in the same dtype (ties in bf16 may flip a choice)
    router64 = Router(m, layer_idx=1).double()
    with torch.no_grad():
        for p in router64.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.05)
    x = torch.randn(N, m.hidden_size, generator=gen)
    state = torch.randn(N, m.moe.router.hidden_size, generator=gen) if m.moe.router.kind == "zaya_mlp" else None
    router = copy.deepcopy(router64).to(device=device, dtype=dtype)
    xd = x.to(device, dtype)
    sd = None if state is None else state.to(device, dtype)
    with torch.no_grad():
        got, _ = router_module.route(router, xd, sd)
        ref, _ = router(xd, sd)
    mismatches = int((got.experts != ref.experts).any(-1).sum())
    results["checks"]["moe_route_vs_reference_same_dtype"] = {
        "tokens": N, "dtype": str(dtype), "choice_mismatches": mismatches,
        "weights_rel_err": _rel(got.weights, ref.weights)}
    ok &= mismatches <= max(1, N // 500)  # only near-ties of rounded probabilities may differ

    # experts: forward and gradients vs float64; the same-dtype reference module gives the yardstick
    experts64 = Experts(m).double()
    with torch.no_grad():
        for p in experts64.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.02)
    classes = m.moe.router_classes
    choices = torch.stack([torch.randperm(classes, generator=gen)[: m.moe.top_k] for _ in range(N)])
    weights = torch.rand(N, m.moe.top_k, generator=gen, dtype=torch.float64)
    if m.moe.skip_expert:
        weights = weights.masked_fill(choices == m.moe.num_experts, 0)
    dy = torch.randn(N, m.hidden_size, generator=gen, dtype=torch.float64)
    x64 = torch.randn(N, m.hidden_size, generator=gen, dtype=torch.float64)

    def run_with(module_experts, fn, dt):
        e = copy.deepcopy(module_experts).to(device=device, dtype=dt)
        xx = x64.to(device, dt).detach().clone().requires_grad_()
        ww = weights.to(device, dt).detach().clone().requires_grad_()
        y = fn(e, xx, Routing(choices.to(device), ww, ww))
        y.backward(dy.to(device, dt))
        return [y, xx.grad, ww.grad, e.gate_up.grad, e.down.grad]

    golden = run_with(experts64, lambda e, xx, r: e(xx, r), torch.float64)
    same_dtype = run_with(experts64, lambda e, xx, r: e(xx, r), dtype)
    kernel = run_with(experts64, experts_module.experts_forward, dtype)
    names = ["out", "dx", "dweights", "dgate_up", "ddown"]
    errors = {}
    for name, k, s, g in zip(names, kernel, same_dtype, golden):
        errors[name] = {"kernel": _rel(k, g), "reference_same_dtype": _rel(s, g)}
        bound = 2 * errors[name]["reference_same_dtype"] + 1e-5
        ok &= bool(torch.isfinite(k).all()) and errors[name]["kernel"] <= bound
    results["checks"]["moe_experts_vs_float64"] = {"tokens": N, "dtype": str(dtype), "rel_err": errors}
    return ok


def grouped_mm_experts(experts, x, routing):
    """The torch._grouped_mm baseline: tokens sorted by expert, two grouped GEMMs, SwiGLU, weighted index_add."""
    E = experts.gate_up.shape[0]
    flat = routing.experts.reshape(-1)
    keep = flat < E
    order = torch.argsort(torch.where(keep, flat, E), stable=True)
    ones = torch.ones_like(flat, dtype=torch.int32)
    counts = torch.zeros(E + 1, dtype=torch.int32, device=x.device).scatter_add_(0, flat.clamp_max(E), ones)
    offs = torch.cumsum(counts[:E], 0, dtype=torch.int32)
    token = order // routing.experts.shape[1]
    xs = x[token]
    gate, up = torch._grouped_mm(xs, experts.gate_up.transpose(1, 2), offs=offs).chunk(2, dim=-1)
    y = torch._grouped_mm(F.silu(gate) * up, experts.down.transpose(1, 2), offs=offs)
    y = y * routing.weights.reshape(-1)[order, None]  # rows past offs[-1] (skip choices) have weight 0
    return torch.zeros_like(x).index_add(0, token, y.to(x.dtype))


def timings(device, spec, experts_module, dtype, smoke, results):
    m = spec.model
    E, H, I, k = m.moe.num_experts, m.hidden_size, m.moe.ffn_size, m.moe.top_k
    experts = Experts(m).to(device=device, dtype=dtype)
    with torch.no_grad():
        for p in experts.parameters():
            p.normal_(0, 0.02)
    has_grouped = hasattr(torch, "_grouped_mm") and device != "cpu"
    for N in ((16,) if smoke else TOKENS):
        choices = torch.stack([torch.randperm(E, device=device)[:k] for _ in range(N)]) if k > 1 else \
            torch.randint(0, E, (N, 1), device=device)
        weights = torch.rand(N, k, device=device, dtype=dtype)
        routing = Routing(choices, weights, weights)
        x = torch.randn(N, H, device=device, dtype=dtype)
        touched = int(torch.unique(choices).numel())
        flops = 2 * 3 * N * k * H * I
        weight_bytes = touched * 3 * H * I * x.element_size()
        cases = [("zdiff experts_forward", lambda: experts_module.experts_forward(experts, x, routing)),
                 ("per-expert loop", lambda: experts(x, routing))]
        if has_grouped:
            cases.append(("torch._grouped_mm", lambda: grouped_mm_experts(experts, x, routing)))
        for name, fn in cases:
            try:
                with torch.no_grad():
                    ms = bench(fn, smoke)
            except Exception as error:  # a baseline this torch / device lacks is reported, not fatal
                results["timings"].append({"kernel": name, "tokens": N, "error": repr(error)[:200]})
                continue
            results["timings"].append({"kernel": name, "pass": "forward", "tokens": N, "experts_touched": touched,
                                       "ms": ms, "TFLOP/s": flops / (ms * 1e-3) / 1e12 if ms == ms else None,
                                       "GB/s": weight_bytes / (ms * 1e-3) / 1e9 if ms == ms else None})
        if N >= 512 or smoke:  # training sizes: forward + backward through x, weights, gate_up, down
            xg = x.clone().requires_grad_()
            wg = weights.clone().requires_grad_()
            dy = torch.randn_like(x)
            for name, fwd in (("zdiff experts_forward", experts_module.experts_forward),
                              ("per-expert loop", lambda e, xx, r: e(xx, r))):
                def step(fwd=fwd):
                    experts.zero_grad(set_to_none=True)
                    fwd(experts, xg, Routing(choices, wg, wg)).backward(dy)
                ms = bench(step, smoke)
                results["timings"].append({"kernel": name, "pass": "forward+backward", "tokens": N,
                                           "experts_touched": touched, "ms": ms,
                                           "TFLOP/s": 3 * flops / (ms * 1e-3) / 1e12 if ms == ms else None})


def run(device, smoke: bool, results: dict) -> bool:
    results.setdefault("checks", {})
    results.setdefault("timings", [])
    spec = bench_spec(smoke)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    target = "cpu" if device == "cpu" else ("mi300x" if torch.version.hip else "h200")
    router_module, experts_module = modules(spec, "fp32" if dtype == torch.float32 else "bf16", target)
    ok = check(device, spec, router_module, experts_module, dtype, N=24 if smoke else 2048, results=results)
    timings(device, spec, experts_module, dtype, smoke, results)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "moe_results"))
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, no timing (CPU / interpreter)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"date": datetime.date.today().isoformat(),
               "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
               "torch": torch.__version__, "triton": triton.__version__, "checks": {}, "timings": []}
    ok = run(device, args.smoke, results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "moe_results.json").write_text(json.dumps(results, indent=1))
    lines = [f"{results['device']}, torch {results['torch']}, triton {results['triton']}, {results['date']}", "",
             "| kernel | pass | tokens | experts touched | ms | TFLOP/s | weight GB/s |",
             "|---|---|---|---|---|---|---|"]
    for t in results["timings"]:
        if "error" in t:
            lines.append(f"| {t['kernel']} | - | {t['tokens']} | - | error: {t['error']} | | |")
            continue
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {t['kernel']} | {t['pass']} | {t['tokens']} | {t['experts_touched']} | {t['ms']:.4f} | "
                     f"{fmt(t.get('TFLOP/s'), '.1f')} | {fmt(t.get('GB/s'), '.0f')} |")
    (out / "moe_results.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(results["checks"], indent=1))
    print("\n".join(lines))
    print("all checks passed" if ok else "CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
