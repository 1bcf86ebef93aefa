"""The `zdiff` command line (also `python -m zdiff`).

Every user error is a ZdiffError: one line on stderr, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .errors import ZdiffError

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _cmd_check(args) -> int:
    from .report import format_summary, spec_summary
    from .spec import load_spec

    if args.context < 0:
        raise ZdiffError(f"--context must not be negative, got {args.context}")
    spec = load_spec(args.spec)
    summary = spec_summary(spec, context=args.context, dtype_bytes=2 if args.dtype != "fp32" else 4)
    print(json.dumps(summary, indent=2) if args.json else format_summary(spec, summary))
    return 0


def _cmd_import(args) -> int:
    import torch

    from .checkpoint.hf_import import import_hf

    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    spec = import_hf(args.hf_dir, args.out_dir, force=args.force, dtype=dtype)
    print(f"imported {spec.name} ({spec.model.attention.kind}, {spec.model.num_layers} layers) -> {args.out_dir}")
    return 0


def _cmd_compile(args) -> int:
    from .codegen.compile import compile_spec
    from .spec import load_spec

    spec = load_spec(args.spec)
    compile_spec(spec, args.target, args.out or f"build/{spec.name}/{args.target}", force=args.force)
    return 0


def _cmd_train(args) -> int:
    from .train import TrainConfig, train

    fields = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__}
    train(TrainConfig(**fields), resume=args.resume)
    return 0


def _cmd_generate(args) -> int:
    from .generation.cli_run import run_generate

    return run_generate(args)


def _cmd_demo(args) -> int:
    from .demo import DemoPlan, run_demo

    names = ("ar_steps", "tidar_steps", "batch_size", "seq_len", "eval_windows", "new_tokens")
    overrides = {name: getattr(args, name) for name in names}
    plan = DemoPlan(**{name: value for name, value in overrides.items() if value is not None})
    summary = run_demo(out=args.out, plan=plan, prompt=args.prompt)
    return 0 if summary["verdict"] == "PASS" else 1


def _cmd_cost(args) -> int:
    from .autotune.cost import cost_report, default_acceptance, format_cost_report, load_acceptance
    from .autotune.targets import target_rates
    from .spec import load_spec

    rates = target_rates(args.target)
    spec = load_spec(args.spec)
    b = spec.diffusion.block_size
    if args.acceptance:
        accept, source = load_acceptance(args.acceptance, b), f"measured ({args.acceptance})"
    else:
        accept, source = default_acceptance(b), "assumed (first draft 0.9, 5% less per slot)"
    report = cost_report(spec, rates, args.batch, args.context, accept, max_proposals=args.max_proposals,
                         acceptance_source=source)
    print(json.dumps(report, indent=2) if args.json else format_cost_report(report))
    return 0


def _cmd_autotune(args) -> int:
    from .autotune.tune import autotune, check_environment
    from .spec import load_spec

    check_environment()
    spec = load_spec(args.spec)
    if args.target not in spec.targets:
        raise ZdiffError(f"targets: the spec lists {', '.join(spec.targets)}; add {args.target} to tune for it")
    autotune(spec, args.target, budget=args.budget, out=args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zdiff", description="TiDAR block-diffusion MoE models: spec -> kernels -> train / generate")
    parser.add_argument("--version", action="version", version=f"zdiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="validate a spec; print parameter, FLOP and cache counts")
    check.add_argument("spec", help="spec YAML file, or a preset name (zaya1-8b, zaya1-tiny, qwen3-moe-tiny)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--context", type=int, default=4096, help="context length for the decode FLOP count")
    check.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="element type for cache sizes")
    check.set_defaults(run=_cmd_check)

    imp = sub.add_parser("import", help="convert a Hugging Face ZAYA1 / Qwen3-MoE directory to a zdiff checkpoint")
    imp.add_argument("hf_dir")
    imp.add_argument("out_dir")
    imp.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    imp.add_argument("--dtype", choices=sorted(DTYPES), help="cast weights (default: keep the file's dtype)")
    imp.set_defaults(run=_cmd_import)

    comp = sub.add_parser("compile", help="render the spec's Triton kernels and compile them ahead of time")
    comp.add_argument("spec")
    comp.add_argument("--target", required=True, help="mi300x, mi355x, h100, h200 or cpu (sources only)")
    comp.add_argument("--out", help="output directory (default build/<spec name>/<target>)")
    comp.add_argument("--force", action="store_true", help="replace a non-empty --out")
    comp.set_defaults(run=_cmd_compile)

    tr = sub.add_parser("train", help="train AR, or convert AR -> TiDAR diffusion (--mode tidar --init CKPT)")
    tr.add_argument("spec", help="spec YAML or preset name")
    tr.add_argument("--data", default="stdlib", help="text file or directory (recursive); 'stdlib' (default): "
                    "this Python's standard library source")
    tr.add_argument("--mode", choices=["ar", "tidar"], required=True)
    tr.add_argument("--init", help="zdiff checkpoint to start from (conversion adds a mask token if needed)")
    tr.add_argument("--steps", type=int, required=True)
    tr.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl, loss.png, final/)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    tr.add_argument("--batch-size", type=int, default=16, help="global batch (sequences per step)")
    tr.add_argument("--seq-len", type=int, default=256)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--warmup", type=int, default=50)
    tr.add_argument("--min-lr-ratio", type=float, default=0.1)
    tr.add_argument("--weight-decay", type=float, default=0.1)
    tr.add_argument("--clip", type=float, default=1.0)
    tr.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="compute dtype (bf16: autocast)")
    tr.add_argument("--checkpoint-every", type=int, default=100)
    tr.add_argument("--eval-every", type=int, default=0)
    tr.add_argument("--eval-windows", type=int, default=64)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 instead of DDP")
    tr.add_argument("--backend", choices=["torch", "triton"], help="torch: the reference model (dense mask); triton: "
                    "the generated kernels (no mask, needs TRITON_INTERPRET=1 on a CPU). Default: triton on a GPU, "
                    "torch on a CPU")
    tr.add_argument("--device", help="cpu, cuda or cuda:N (default: this rank's GPU when there is one, else cpu)")
    tr.add_argument("--activation-checkpointing", action="store_true",
                    help="recompute each layer's activations in backward (long sequences)")
    tr.set_defaults(run=_cmd_train)

    gen = sub.add_parser("generate", help="decode prompts with AR or TiDAR and report T/NFE, tokens/s, acceptance")
    gen.add_argument("checkpoint", help="a zdiff checkpoint directory (e.g. RUN/final)")
    gen.add_argument("--prompt", action="append", required=True, help="repeat for a batch of prompts")
    gen.add_argument("--sampler", choices=["lossless", "logit_mix", "greedy"], help="default: the spec's")
    gen.add_argument("--mix-weight", type=float, help="logit_mix weight w (1 = lossless)")
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--mode", choices=["ar", "tidar"], default="tidar")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--verifier", choices=["reference", "fused"], default="reference")
    gen.add_argument("--compare-ar", action="store_true", help="also decode with AR and compare")
    gen.add_argument("--histogram", metavar="PNG", help="write the tokens-per-forward histogram")
    gen.add_argument("--json", action="store_true")
    gen.set_defaults(run=_cmd_generate)

    cost = sub.add_parser("cost", help="roofline floors of AR and TiDAR forwards on a target; recommended proposals")
    cost.add_argument("spec")
    cost.add_argument("--target", required=True, help="mi300x, mi355x, h100 or h200")
    cost.add_argument("--batch", type=int, default=1, help="sequences per forward")
    cost.add_argument("--context", type=int, default=4096, help="cached tokens per sequence")
    cost.add_argument("--acceptance", metavar="FILE", help="JSON histogram of accepted drafts per step "
                      "(zdiff generate --json output or a list); default: a documented assumption")
    cost.add_argument("--max-proposals", type=int, default=8, help="largest P to evaluate")
    cost.add_argument("--json", action="store_true")
    cost.set_defaults(run=_cmd_cost)

    tune = sub.add_parser("autotune", help="compile each kernel's config space ahead of time, prune, rank; "
                          "write JSON tables per device")
    tune.add_argument("spec")
    tune.add_argument("--target", required=True, help="mi300x, mi355x, h100 or h200")
    tune.add_argument("--budget", type=float, default=300.0, help="seconds of wall time (default 300); the best "
                      "config so far is kept when it runs out")
    tune.add_argument("--out", help="tables root (default: the package's zdiff/autotune/tables); "
                      "files go to OUT/<target>/<kernel module>.json")
    tune.set_defaults(run=_cmd_autotune)

    demo = sub.add_parser("demo", help="the main job on the embedded default (no downloads)")
    demo.add_argument("--out", default="runs/demo", help="where the demo's runs go (its ar/ and tidar/ are replaced)")
    demo.add_argument("--prompt", default="def fibonacci(n):")
    # defaults live in demo.DemoPlan (sized for a 2-core CPU); these flags shrink it for tests
    for flag in ("--ar-steps", "--tidar-steps", "--batch-size", "--seq-len", "--eval-windows", "--new-tokens"):
        demo.add_argument(flag, type=int, help="override the demo plan")
    demo.set_defaults(run=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ZdiffError as err:
        print(f"zdiff: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
