"""Projected ZAYA1-8B decode speedup over AR per policy (cost model x acceptance): AR, TiDAR today (every draft
verified, no budget), TiDAR + d (verify length chosen), TiDAR + d + budget (draft rows route among the verify
rows' experts + m). PROJECTIONS from `zdiff cost`'s roofline floors, not measurements.

    python benchmarks/moe_projection.py [--acceptance FILE] [--budget-acceptance FILE] [--routing FILE]
                                        [--out DIR] [--plot PNG]

Writes DIR/results.json, DIR/results.md (every policy's row, then the one-line-per-batch summary BENCHMARKS.md
quotes) and the plot. A measured histogram from a smaller block (e.g. the tiny 16-expert MoE's b = 8) is padded
with zeros to the spec's block: drafts past that block are never accepted, a pessimistic reading."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zdiff.autotune.cost import CostModel, default_acceptance, load_acceptance, step_report
from zdiff.autotune.routing import load_routing
from zdiff.autotune.targets import target_rates
from zdiff.outputs import atomic_write_text
from zdiff.plots import speedup_by_batch
from zdiff.spec import load_spec

TARGETS = ("mi300x", "mi355x", "h200")
BATCHES = (1, 4, 8, 32)


def project(spec, accept, budget_accept, routing, context: int, max_proposals: int) -> list[dict]:
    rows = []
    for target in TARGETS:
        model = CostModel(spec, target_rates(target), routing=routing)
        for batch in BATCHES:
            for policy, r in step_report(model, batch, context, accept, max_proposals, budget_accept).items():
                rows.append({"target": target, "batch": batch, "policy": policy, **r})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| target | batch | policy | P | d | m | rows | experts/layer | floor ms | tokens/fwd | speedup vs AR |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        budget = "-" if r["budget"] is None else r["budget"]
        lines.append(f"| {r['target']} | {r['batch']} | {r['policy']} | {r['P']} | {r['verify'] if r['P'] else '-'} "
                     f"| {budget} | {r['rows_per_sequence']} | {r['distinct_experts']:.2f} | {r['floor_ms']:.3f} "
                     f"| {r['tokens_per_forward']:.2f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """One line per (target, batch): each policy's speedup and choice, the experts read per layer today and with
    the budget."""
    lines = ["| target | batch | TiDAR today (P, d) | TiDAR + d (P, d) | TiDAR + d + budget (P, d, m) | "
             "experts/layer read: today -> budget |", "|---|---|---|---|---|---|"]
    keyed = {(r["target"], r["batch"], r["policy"]): r for r in rows}
    for target, batch in dict.fromkeys((r["target"], r["batch"]) for r in rows):
        cells = []
        for policy in ("TiDAR today", "TiDAR + d", "TiDAR + d + budget"):
            r = keyed[target, batch, policy]
            choice = "AR" if not r["P"] else ", ".join(
                map(str, (r["P"], r["verify"]) + ((("-" if r["budget"] is None else r["budget"]),)
                                                  if policy.endswith("budget") else ())))
            cells.append(f"{r['speedup']:.2f}x ({choice})")
        today, budget = keyed[target, batch, "TiDAR today"], keyed[target, batch, "TiDAR + d + budget"]
        lines.append(f"| {target} | {batch} | {' | '.join(cells)} | {today['distinct_experts']:.1f} -> "
                     f"{budget['distinct_experts']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="examples/specs/zaya1-8b.yaml")
    parser.add_argument("--acceptance", help="accepted-drafts histogram (zdiff cost --acceptance); default assumed")
    parser.add_argument("--budget-acceptance", help="the same with the draft expert budget; default: --acceptance")
    parser.add_argument("--routing", help="routing histogram (python -m zdiff.autotune.routing); default uniform")
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--max-proposals", type=int, default=8)
    parser.add_argument("--out", default="runs/moe_projection")
    parser.add_argument("--plot", default="benchmarks/plots/moe_projection_zaya1_8b.png")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    b = spec.diffusion.block_size
    accept = load_acceptance(args.acceptance, b) if args.acceptance else default_acceptance(b)
    budget_accept = load_acceptance(args.budget_acceptance, b) if args.budget_acceptance else None
    routing = load_routing(args.routing, spec.model.moe.num_experts) if args.routing else None
    rows = project(spec, accept, budget_accept, routing, args.context, args.max_proposals)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = (f"measured {Path(args.acceptance).name}" if args.acceptance
              else "assumed: first draft 0.9, 5% less per slot")
    atomic_write_text(out / "results.json", json.dumps({"spec": spec.name, "context": args.context,
                                                        "acceptance": source, "rows": rows}, indent=1))
    text = table(rows) + "\n\n" + summary(rows)
    atomic_write_text(out / "results.md", text + "\n")
    print(text)
    title = f"{spec.name}, context {args.context}: PROJECTED speedup over AR (cost model x {source})"
    if speedup_by_batch(rows, Path(args.plot), title):
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
