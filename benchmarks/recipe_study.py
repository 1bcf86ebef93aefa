"""Recipe study for TiDAR conversion on a tiny spec: one AR checkpoint, then one conversion per recipe, each
measured by the acceptance benchmark (zdiff.eval.acceptance). Issue 20, item 4.

    PYTHONPATH=. python benchmarks/recipe_study.py --out runs/study                    # every recipe (hours)
    PYTHONPATH=. python benchmarks/recipe_study.py --out runs/study --rows data-200 mix-200 --ar-steps 360

A recipe changes the conversion only: steps, lr, the diffusion targets (spec diffusion.loss), the slot
weights (diffusion.loss.draft_acceptance), the AR weight alpha, and the block size (with its default
acceptance levels). --spec picks the model (zaya1-tiny unless told; a larger spec gets its own --out). The AR
stage is the demo's (360 steps, batch 32 x 128, lr 3e-3) unless told; it is trained once into --out/ar and
reused when present. Every stage runs on --threads torch threads (1 by default), so rows are bit-reproducible.
Rows already in --out/study.json are not rerun: use a fresh --out when changing --steps-scale or the AR stage.
Writes --out/study.json, --out/study.md (the table) and --out/study_acceptance.png / study_acceptance_mix.png
(lossless / logit-mix 0.5 acceptance by position, one line per row of --plot-rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onpolicy_corpus import onpolicy_corpus  # noqa: E402

from zdiff.eval.acceptance import BenchPlan, paired_difference, run_benchmark  # noqa: E402
from zdiff.plots import acceptance_by_position  # noqa: E402
from zdiff.spec import dump_spec, load_spec  # noqa: E402
from zdiff.spec.schema import DiffusionLossSpec  # noqa: E402
from zdiff.train import TrainConfig, train  # noqa: E402
from zdiff.train.shards import MANIFEST  # noqa: E402

BASE = dict(steps=200, lr=1e-3, loss=(1.0, 0.0, "forward_kl"), alpha=1.0, block_size=None, slots=None, onpolicy=0.0)
RECIPES = {
    "data-200": {}, "self-200": dict(loss=(0.0, 1.0, "forward_kl")), "mix-200": dict(loss=(1.0, 1.0, "forward_kl")),
    "mix-tv-200": dict(loss=(1.0, 1.0, "tv")), "data-800": dict(steps=800),
    "mix-800": dict(steps=800, loss=(1.0, 1.0, "forward_kl")),
    "data-3200": dict(steps=3200), "mix-3200": dict(steps=3200, loss=(1.0, 1.0, "forward_kl")),
    "data-200-alpha0.25": dict(alpha=0.25), "data-200-alpha4": dict(alpha=4.0),
    "mix-200-alpha0.25": dict(alpha=0.25, loss=(1.0, 1.0, "forward_kl")),
    "mix-200-alpha0.5": dict(alpha=0.5, loss=(1.0, 1.0, "forward_kl")),
    # onpolicy w: a share w of the conversion's rows from the AR checkpoint's own samples (onpolicy_corpus.py)
    "mix-200-onpolicy0.5": dict(onpolicy=0.5, loss=(1.0, 1.0, "forward_kl")),
    "mix-200-onpolicy1": dict(onpolicy=1.0, loss=(1.0, 1.0, "forward_kl")),
    "data-200-slots0.5": dict(slots=0.5), "mix-200-slots0.5": dict(slots=0.5, loss=(1.0, 1.0, "forward_kl")),
    "data-200-lr3e-3": dict(lr=3e-3),
    "data-200-block16": dict(block_size=16), "mix-200-block16": dict(block_size=16, loss=(1.0, 1.0, "forward_kl")),
}


def row_spec(name: str, recipe: dict, out: Path, base_spec: str = "zaya1-tiny") -> Path:
    spec = load_spec(base_spec)
    loss = DiffusionLossSpec(*recipe["loss"], draft_acceptance=recipe["slots"])
    diffusion = dataclasses.replace(spec.diffusion, loss=loss, loss_alpha=recipe["alpha"])
    if recipe["block_size"]:
        diffusion = dataclasses.replace(diffusion, block_size=recipe["block_size"], acceptance_levels=None)
    path = out / f"{name}.yaml"
    # a null acceptance_levels line dropped whole (the loader then picks the block size's default levels)
    text = dump_spec(dataclasses.replace(spec, diffusion=diffusion))
    path.write_text(re.sub(r"^[ \t]*acceptance_levels: null\n", "", text, flags=re.M))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--spec", default="zaya1-tiny", help="the model: a spec name or file")
    p.add_argument("--data", default="stdlib", help="training corpus (its held-out split gives the prompts)")
    p.add_argument("--rows", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--ar-steps", type=int, default=360)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--eval-windows", type=int, default=96)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--onpolicy-sequences", type=int, default=1024, help="samples of the AR checkpoint written "
                   "for the on-policy rows (each seq_len / 2 training tokens + --new-tokens sampled ones)")
    p.add_argument("--plot-rows", nargs="+", help="rows drawn in the plots (default: every row of study.json)")
    p.add_argument("--ceiling", help="draft_ceiling.py --out JSON: draw the perfect drafter's curve in the plot")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every recipe's conversion steps "
                   "(a quick look at the trend; the table records the steps run)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(spec=args.spec, data=args.data, batch_size=args.batch_size, seq_len=args.seq_len,
                  eval_windows=args.eval_windows, warmup=30, checkpoint_every=1000, threads=args.threads)
    if not (out / "ar" / "final").is_dir():
        train(TrainConfig(mode="ar", steps=args.ar_steps, out=str(out / "ar"), lr=3e-3, **common))
    before = json.loads((out / "ar" / "metrics.jsonl").read_text().splitlines()[-1])["heldout_ar_bits_per_byte"]
    plan = BenchPlan(prompts=args.prompts, new_tokens=args.new_tokens, seq_len=args.seq_len,
                     eval_windows=args.eval_windows, mix_weights=(0.5,), threads=args.threads)
    study = json.loads((out / "study.json").read_text()) if (out / "study.json").is_file() else {}
    for name in args.rows:
        recipe = {**BASE, **RECIPES[name]}
        recipe["steps"] = max(1, round(recipe["steps"] * args.steps_scale))
        if name not in study:
            run = out / name
            cfg = {**common, "spec": str(row_spec(name, recipe, out, args.spec)),
                   "data": training_data(recipe, args, out)}
            if not (run / "final").is_dir():
                train(TrainConfig(mode="tidar", steps=recipe["steps"], out=str(run), lr=recipe["lr"],
                                  init=str(out / "ar" / "final"), **cfg))
            study[name] = {"recipe": recipe, "ar_bits_per_byte_before": before,
                           **run_benchmark(run / "final", args.data, plan)}
            (out / "study.json").write_text(json.dumps(study, indent=1))
    (out / "study.md").write_text(table(study))
    print(table(study), end="")
    ceiling = json.loads(Path(args.ceiling).read_text())["ceiling"] if args.ceiling else None
    drawn = [n for n in (args.plot_rows or study) if n in study]
    for sampler, suffix in (("lossless", ""), ("logit_mix_0.5", "_mix")):
        acceptance_by_position({n: study[n]["samplers"][sampler] for n in drawn}, out / f"study_acceptance{suffix}.png",
                               f"{Path(args.spec).stem} conversions: {sampler} acceptance by draft position",
                               ceiling if sampler == "lossless" else None)
    return 0


def training_data(recipe: dict, args, out: Path) -> str:
    """--data of a row's conversion: the corpus, or a mixture with the AR checkpoint's own samples."""
    share = recipe["onpolicy"]
    if not share:
        return args.data
    corpus = out / "onpolicy"
    if not (corpus / MANIFEST).is_file():
        onpolicy_corpus(out / "ar" / "final", corpus, args.data, args.onpolicy_sequences,
                        prompt_tokens=args.seq_len // 2, new_tokens=args.new_tokens, threads=args.threads)
    return str(corpus) if share == 1 else f"{args.data}:{1 - share:g},{corpus}:{share:g}"


def table(study: dict) -> str:
    """One row per recipe; the last column is T/NFE lossless minus the first row's, on the same prompts."""
    rows = ["| recipe | steps | lr | targets (data, distill, D) | slot weights r | alpha | b | "
            "T/NFE lossless [95% CI] | T/NFE mix 0.5 [95% CI] | lossless minus first row [95% CI, paired] | "
            "AR bits/byte before -> after |",
            "|" + "---|" * 11]
    first = next(iter(study.values()), None)
    for name, r in study.items():
        rec, s = r["recipe"], r["samplers"]
        cells = [f"{s[k]['tokens_per_forward']:.2f} [{s[k]['tokens_per_forward_ci95'][0]:.2f}, "
                 f"{s[k]['tokens_per_forward_ci95'][1]:.2f}]" for k in ("lossless", "logit_mix_0.5")]
        paired = "-"
        if r is not first and r["plan"] == first["plan"]:
            d = paired_difference(first["samplers"]["lossless"], s["lossless"])
            paired = f"{d['difference']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
        slots = "uniform" if rec.get("slots") is None else f"{rec['slots']:g}"
        rows.append(f"| {name} | {rec['steps']} | {rec['lr']:g} | {tuple(rec['loss'])} | {slots} | {rec['alpha']:g} | "
                    f"{r['block_size']} | {cells[0]} | {cells[1]} | {paired} | {r['ar_bits_per_byte_before']:.4f} -> "
                    f"{r['heldout_ar_bits_per_byte']:.4f} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.exit(main())
