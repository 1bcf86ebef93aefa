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


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(prompt=args.prompt, new_tokens=args.tokens, seed=args.seed)
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

    demo = sub.add_parser("demo", help="the main job on the embedded default (no downloads)")
    demo.add_argument("--prompt", default="def fibonacci(n):")
    demo.add_argument("--tokens", type=int, default=24)
    demo.add_argument("--seed", type=int, default=0)
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
