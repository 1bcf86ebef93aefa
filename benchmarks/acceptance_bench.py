"""Acceptance benchmark of one checkpoint: T/NFE with 95% bootstrap intervals, acceptance by draft position.

    PYTHONPATH=. python benchmarks/acceptance_bench.py runs/demo/tidar/final --out runs/demo/acceptance
    PYTHONPATH=. python benchmarks/acceptance_bench.py CKPT --prompts 8 --new-tokens 16 --out /tmp/acc  # quick

Decodes held-out prompts of --data (the training corpus's held-out split: for the demo, 1 stdlib file in
20) with AR, TiDAR lossless, logit-mix at each --mix-weights and greedy on the decode engine, and writes
into --out: acceptance.json (every number, and the per-request tokens, steps and accepted drafts behind
them), acceptance.md (a table) and acceptance_by_position.png (matplotlib optional). The logic lives in
zdiff.eval.acceptance; decoding goes through zdiff.generation.api.generate_on_engine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zdiff.errors import ZdiffError  # noqa: E402
from zdiff.eval.acceptance import BenchPlan, run_benchmark  # noqa: E402
from zdiff.plots import MISSING, acceptance_by_position  # noqa: E402


def table(report: dict) -> str:
    rows = [f"held-out AR {report['heldout_ar_bits_per_byte']:.4f} bits/byte; block size {report['block_size']}, "
            f"{report['plan']['prompts']} prompts x {report['plan']['new_tokens']} new tokens, {report['threads']} "
            "thread(s)", "", "| sampler | T/NFE | 95% CI | acceptance by draft position 1..b-1 |", "|---|---|---|---|"]
    for name, r in report["samplers"].items():
        lo, hi = r["tokens_per_forward_ci95"]
        curve = " ".join(f"{v:.2f}" for v in r["acceptance_by_position"]) or "-"
        rows.append(f"| {name} | {r['tokens_per_forward']:.3f} | [{lo:.3f}, {hi:.3f}] | {curve} |")
    return "\n".join(rows) + "\n"


def write_outputs(report: dict, out: Path) -> list[Path]:
    """acceptance.json / .md written to temp files and renamed (no half-written artefacts); the plot when it can."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("acceptance.json", json.dumps(report, indent=1)), ("acceptance.md", table(report))):
        with tempfile.NamedTemporaryFile("w", dir=out, delete=False, suffix=".tmp") as f:
            f.write(text)
        Path(f.name).replace(out / name)
        written.append(out / name)
    plot = out / "acceptance_by_position.png"
    if acceptance_by_position(report["samplers"], plot, f"{report['spec']}: acceptance by draft position"):
        written.append(plot)
    else:
        print(f"no acceptance plot: {MISSING}", file=sys.stderr)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="a zdiff checkpoint directory (e.g. runs/demo/tidar/final)")
    p.add_argument("--data", default="stdlib", help="corpus whose held-out split gives prompts and bits/byte")
    p.add_argument("--out", required=True, help="directory for acceptance.json / .md / .png")
    defaults = BenchPlan()
    for field in ("prompts", "prompt_tokens", "new_tokens", "eval_windows", "seq_len", "seed"):
        p.add_argument(f"--{field.replace('_', '-')}", type=int, default=getattr(defaults, field))
    p.add_argument("--mix-weights", type=float, nargs="+", default=list(defaults.mix_weights))
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: OMP_NUM_THREADS, else cores)")
    p.add_argument("--acceptance-levels", type=int, nargs="+", help="decode with proposal blocks at these levels "
                   "(e.g. 0 1 2 3 4 5 6 7: every level, so the next drafts always start at their block's slot 1) "
                   "instead of the checkpoint's")
    args = p.parse_args(argv)
    plan = BenchPlan(prompts=args.prompts, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                     mix_weights=tuple(args.mix_weights), eval_windows=args.eval_windows, seq_len=args.seq_len,
                     seed=args.seed, threads=args.threads,
                     acceptance_levels=None if args.acceptance_levels is None else tuple(args.acceptance_levels))
    try:
        report = run_benchmark(args.checkpoint, args.data, plan)
    except ZdiffError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(report), end="")
    print("wrote " + ", ".join(map(str, write_outputs(report, Path(args.out)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
