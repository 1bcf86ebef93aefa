"""End-to-end decode steps of the engine at ZAYA1-8B shapes, next to the `zdiff cost` floor.

    PYTHONPATH=. python benchmarks/decode_bench.py --out "$OUT"               # one GPU call
    python benchmarks/decode_bench.py --smoke --out /tmp/decode               # CPU: tiny spec, logic only
    python benchmarks/decode_bench.py --bytes-only --out /tmp/bytes           # CPU: analytic bytes per step only

For every (context, batch, P) it fills a slot cache to `context` tokens per sequence (random
K/V and CCA state: a step's cost does not depend on the values), runs engine steps with random
bf16 weights, and reports ms per step graphed and eager, the roofline floor of the same forward
(CostModel.forward on the card's target), their ratio, host time per step (stats.host_seconds:
step() outside waits), kernels per step and the top kernels of a profile (eager steps), and
tokens/s at an assumed acceptance histogram (the cost model's default) and, with --acceptance,
at a measured one (e.g. the demo's `zdiff generate --json` output). Random weights accept
almost nothing, so tokens/s comes from the histogram, not from the run. Every row also has the
bytes the step moves outside the forward (`zdiff.generation.step_bytes`, an analytic count of what
decode_step runs) next to the forward's (the cost model's); --bytes-only writes just those.
Writes results.json, results.md (card, versions, date) and steps.png (ms/step vs batch with the
floor) into --out.

MoE-aware TiDAR: --verify-lengths D ... and --budgets off|M ... add a row per (P, d, m) (the engine captures that
one option; the floor is `cost.step_forward`, tokens/s from the offset chain truncated at d), and --auto adds a
row per (context, batch) where the engine's policy (proposals="auto", its default options) chooses; every row
reports the steps per (P, d, m) the engine ran (`steps_used`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zdiff.autotune.cost import (  # noqa: E402
    CostModel,
    default_acceptance,
    expected_tokens,
    load_acceptance,
    offset_outcomes,
    step_forward,
    truncated_outcomes,
)
from zdiff.autotune.targets import target_rates  # noqa: E402
from zdiff.generation.engine import Engine, RequestParams  # noqa: E402
from zdiff.generation.step_bytes import step_bytes_outside_forward  # noqa: E402
from zdiff.spec import load_spec  # noqa: E402


def build(spec, backend: str, device: str, dtype):
    """Random weights (N(0, 0.02), norms at one) created on the device: no 35 GB host init."""
    from zdiff.codegen.generated import generated_model_class
    from zdiff.runtime import Transformer, cast_model

    cls = Transformer if backend == "torch" else generated_model_class(spec, device=torch.device(device))
    with torch.device(device):
        model = cls(spec.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
            elif name.endswith("bias"):
                p.zero_()
            else:  # norms, residual scales, key temperatures
                p.fill_(1.0)
    return cast_model(model, dtype=dtype).eval()


def filled_engine(model, spec, batch: int, context: int, proposals, graphs: bool, steps: int,
                  verify: int = 0, budget: int | None = None) -> Engine:
    headroom = (steps + 8) * spec.diffusion.block_size + 64  # every step commits at most b tokens per slot
    options = {} if proposals == "auto" or not proposals else dict(verify_lengths=(verify,), expert_budgets=(budget,))
    engine = Engine(model, diffusion=spec.diffusion, spec=spec, max_slots=batch, max_len=context + headroom,
                    proposals=proposals, graphs=graphs, **options)
    for i in range(batch):  # one-token prompts: no prefill; the cache is filled below
        engine.add([i + 1], RequestParams(max_new_tokens=headroom - 2, seed=i, mode="tidar" if proposals else "ar"))
    engine._admit()
    with torch.no_grad():
        engine.state.cache_len[:batch] = context
        for layer in engine.cache.layers:
            for buffer in (layer.k, layer.v, layer.state_qk, layer.state_delayed):
                buffer.normal_()
    return engine


def time_steps(engine: Engine, steps: int, warmup: int) -> tuple[float, float]:
    """(ms per step on the device clock, host ms per step outside waits)."""
    cuda = engine.device.type == "cuda"
    for _ in range(warmup):
        engine.step()
    if cuda:
        torch.cuda.synchronize()
    host0 = engine.stats.host_seconds
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    if cuda:
        torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / steps
    return wall * 1e3, (engine.stats.host_seconds - host0) / steps * 1e3


def profile_steps(engine: Engine, steps: int) -> tuple[float, list[tuple[str, float]]]:
    """(kernels per step, top 10 kernels by device time in ms per step) of eager steps."""
    from torch.profiler import ProfilerActivity, profile

    cuda = engine.device.type == "cuda"
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        for _ in range(steps):
            engine.step()
        if cuda:
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if (e.device_type.name == "CUDA") == cuda]
    attr = "device_time_total" if cuda else "self_cpu_time_total"
    if cuda:
        kernels = sum(e.count for e in events)
    else:  # on the CPU count the aten ops that would launch kernels
        kernels = sum(e.count for e in events if e.key.startswith("aten::") and getattr(e, attr) > 0)
    top = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:10]
    return kernels / steps, [(e.key[:90], getattr(e, attr) / 1e3 / steps) for e in top]


def _measure(model, spec, batch, context, p, d, m, device, steps) -> dict:
    """Graphed (on a GPU) and eager ms per step, host ms, kernels per step and the steps per option run."""
    row = {}
    for graphs in ([True, False] if device == "cuda" else [False]):
        engine = filled_engine(model, spec, batch, context, p, graphs, 2 * steps + 3, d, m)
        ms, host_ms = time_steps(engine, steps, warmup=3)
        key = "graphed" if graphs else "eager"
        row[f"{key}_ms"], row[f"{key}_host_ms"] = ms, host_ms
        if not graphs:
            row["kernels_per_step"], row["top_kernels"] = profile_steps(engine, max(2, steps // 4))
            row["steps_used"] = {o.label: n for o, n in sorted(engine.stats.steps_used.items(),
                                                               key=lambda item: item[0].label)}
            row["options_used"] = [(o.proposals, o.verify, o.budget, n) for o, n in engine.stats.steps_used.items()]
        del engine
    return row


def _mean_over_steps(used, value) -> float:
    """value(p, d, m) averaged over the steps the engine ran with each option."""
    total = sum(n for *_, n in used)
    return sum(value(p, d, m) * n for p, d, m, n in used) / max(total, 1)


def _floor(cost, batch, context, used) -> float:
    """Seconds of the steps' cost-model floor (the policy's row: averaged over the options it chose)."""
    def floor(p, d, m):
        return cost.forward(batch, context, 0).seconds if not p else step_forward(cost, batch, context, p, d, m).seconds
    return _mean_over_steps(used, floor)


def _tokens(accept, levels, b, used) -> float:
    """Expected tokens per step at `accept` (a verify length d truncates the offset chain)."""
    def tokens(p, d, m):
        placed = tuple(a for a in levels[:p] if a <= d)
        return expected_tokens(accept, placed, b, truncated_outcomes(offset_outcomes(accept), d)) if p else 1.0
    return _mean_over_steps(used, tokens)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="decode-bench")
    ap.add_argument("--smoke", action="store_true", help="tiny spec on the CPU, a few steps")
    ap.add_argument("--spec", default="zaya1-8b")
    ap.add_argument("--backend", default="triton")
    ap.add_argument("--contexts", type=int, nargs="+", default=[4096, 32768])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--proposals", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--acceptance", help="a measured histogram (zdiff generate --json output)")
    ap.add_argument("--verify-lengths", type=int, nargs="+", help="drafts verified per step d (default: b - 1)")
    ap.add_argument("--budgets", nargs="+", default=["off"], help="draft expert budgets: off or M (MoE specs)")
    ap.add_argument("--auto", action="store_true", help="also a row per (context, batch) chosen by the policy")
    ap.add_argument("--bytes-only", action="store_true", help="only the analytic bytes per step (no model, no run)")
    args = ap.parse_args()
    if args.bytes_only:
        return bytes_table(load_spec(args.spec), args.contexts[0], args.batches, args.proposals, Path(args.out))
    if args.smoke:
        args.spec, args.backend, args.contexts, args.batches, args.steps = "zaya1-tiny", "torch", [24], [1, 2], 2
        args.proposals, args.verify_lengths, args.budgets, args.auto = [0, 2], [3], ["off", "0"], True
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    spec = load_spec(args.spec)
    target = "h200" if device == "cpu" else _target()
    cost = CostModel(spec, target_rates(target))
    b, levels = spec.diffusion.block_size, spec.diffusion.acceptance_levels
    histograms = {"assumed": default_acceptance(b)}
    if args.acceptance:
        histograms["measured"] = load_acceptance(args.acceptance, b)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build(spec, args.backend, device, dtype)
    budgets = [None if m == "off" else int(m) for m in args.budgets] if spec.model.moe is not None else [None]
    options = [(p, d, m) for p in args.proposals for d in ((args.verify_lengths or [b - 1]) if p else [0])
               for m in (budgets if p else [None])] + ([("auto", 0, None)] if args.auto else [])
    rows = []
    for context in args.contexts:
        for batch in args.batches:
            for p, d, m in options:
                row = {"context": context, "batch": batch, "proposals": p, "verify": d, "budget": m}
                row.update(_measure(model, spec, batch, context, p, d, m, device, args.steps))
                floor = _floor(cost, batch, context, row["options_used"])
                row.update(floor_ms=floor * 1e3, **step_bytes_row(spec, cost, batch, context, p if p != "auto" else 0))
                best = row.get("graphed_ms", row["eager_ms"])
                row["ratio_to_floor"] = best / row["floor_ms"]
                for name, accept in histograms.items():
                    row[f"tokens_per_s_{name}"] = batch * _tokens(accept, levels, b, row["options_used"]) / (best / 1e3)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "top_kernels"}), flush=True)
    card = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    results = {"date": datetime.date.today().isoformat(), "device": card,
               "torch": torch.__version__, "triton": triton.__version__, "spec": spec.name, "backend": args.backend,
               "target": target, "rows": rows}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(_markdown(results))
    _plot(results, out / "steps.png")
    return 0


def step_bytes_row(spec, cost: CostModel, batch: int, context: int, proposals: int) -> dict:
    """Bytes per step outside the forward (by part) and the forward's, in GB, and their ratio."""
    parts = step_bytes_outside_forward(spec.model, spec.diffusion.block_size, batch, proposals)
    filtered = sum(step_bytes_outside_forward(spec.model, spec.diffusion.block_size, batch, proposals,
                                              filtered=True).values())
    forward = cost.forward(batch, context, proposals).bytes
    return {"outside_gb": sum(parts.values()) / 1e9, "forward_gb": forward / 1e9,
            "outside_over_forward": sum(parts.values()) / forward,
            "outside_parts_gb": {name: n / 1e9 for name, n in parts.items()},
            "filtered_outside_gb": filtered / 1e9, "filtered_over_forward": filtered / forward}


def bytes_table(spec, context: int, batches: list[int], proposals: list[int], out: Path) -> int:
    """bytes.md / bytes.json: the analytic bytes per step outside the forward next to the forward's."""
    cost = CostModel(spec, target_rates("h200"))
    rows = [{"batch": b, "proposals": p, **step_bytes_row(spec, cost, b, context, p)} for b in batches
            for p in proposals]
    names = list(rows[0]["outside_parts_gb"])
    lines = [f"{spec.name}, context {context}: GB per decode step (analytic; the parts are for unfiltered "
             "samplers; 'with top-k / top-p' adds the filter kernel's passes, an upper bound)", "",
             "| batch | P | forward | outside | outside / forward | " + " | ".join(names)
             + " | with top-k / top-p | its / forward |",
             "|---|---|---|---|---|" + "---|" * (len(names) + 2)]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['proposals']} | {r['forward_gb']:.2f} | {r['outside_gb']:.3f} | "
                     f"{r['outside_over_forward']:.1%} | "
                     + " | ".join(f"{r['outside_parts_gb'][n]:.3f}" for n in names)
                     + f" | {r['filtered_outside_gb']:.3f} | {r['filtered_over_forward']:.1%} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bytes.json").write_text(json.dumps(rows, indent=2))
    (out / "bytes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _target() -> str:
    from zdiff.targets import device_target

    return device_target(torch.device("cuda")).name


def _markdown(results: dict) -> str:
    lines = [f"{results['device']}, torch {results['torch']}, triton {results['triton']}, {results['date']}; "
             f"{results['spec']} backend {results['backend']}, floors for {results['target']}", "",
             "| context | batch | P | d | m | floor ms | graphed ms | eager ms | ratio | host ms | kernels/step "
             "| tok/s (assumed) | GB outside / forward | steps per (P, d, m) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        budget = "off" if r["budget"] is None else r["budget"]
        used = ", ".join(f"{k}: {n}" for k, n in r["steps_used"].items())
        lines.append(f"| {r['context']} | {r['batch']} | {r['proposals']} | {r['verify']} | {budget} | "
                     f"{r['floor_ms']:.3f} | "
                     f"{r.get('graphed_ms', float('nan')):.3f} | {r['eager_ms']:.3f} | {r['ratio_to_floor']:.2f} | "
                     f"{r.get('graphed_host_ms', r['eager_host_ms']):.3f} | {r['kernels_per_step']:.0f} | "
                     f"{r['tokens_per_s_assumed']:.0f} | {r['outside_gb']:.3f} / {r['forward_gb']:.2f} | {used} |")
    worst = max(results["rows"], key=lambda r: r["ratio_to_floor"])
    lines += ["", f"Top kernels of the eager step furthest from its floor (context {worst['context']}, batch "
              f"{worst['batch']}, P {worst['proposals']}), ms per step:", ""]
    lines += [f"- {name}: {ms:.3f}" for name, ms in worst["top_kernels"]]
    return "\n".join(lines) + "\n"


def _option_name(row: dict) -> str:
    if row["proposals"] in ("auto", 0):
        return "policy (auto)" if row["proposals"] == "auto" else "P=0 (AR)"
    budget = "off" if row["budget"] is None else row["budget"]
    return f"P={row['proposals']} d={row['verify']} m={budget}"


def _plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len({r["context"] for r in results["rows"]}), figsize=(11, 4), squeeze=False)
    for ax, context in zip(axes[0], sorted({r["context"] for r in results["rows"]})):
        for option in dict.fromkeys(_option_name(r) for r in results["rows"]):
            rows = [r for r in results["rows"] if r["context"] == context and _option_name(r) == option]
            batches = [r["batch"] for r in rows]
            line, = ax.plot(batches, [r.get("graphed_ms", r["eager_ms"]) for r in rows], marker="o", label=option)
            ax.plot(batches, [r["floor_ms"] for r in rows], linestyle="--", color=line.get_color())
        ax.set(xscale="log", yscale="log", xlabel="batch (slots)", ylabel="ms per step",
               title=f"context {context} (dashed: cost-model floor)")
        ax.legend()
    fig.suptitle(f"{results['spec']} decode steps, {results['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
