"""The `zdiff` command line (also `python -m zdiff`).

Every user error is a ZdiffError: one line on stderr, exit status 2, no traceback. Numbers are
range-checked when parsed (bounds: zdiff.limits), so a bad flag fails before any work starts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import warnings

from . import limits
from ._version import __version__
from .errors import ZdiffError, ZdiffWarning
from .sampler import SAMPLERS

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
COMPILE_TARGETS = ("mi300x", "mi355x", "h100", "h200", "cpu")
GPU_TARGETS = COMPILE_TARGETS[:-1]
MAX_SEED = 2**63 - 1
TABLES_HELP = ("autotune tables to launch with (a `zdiff autotune --out` directory; default: $ZDIFF_TABLES, then the "
               "user's $ZDIFF_CACHE/tables, then the shipped ones)")


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`zdiff: error: --flag must ...`) and exit status 2 like every
    other error, phrased as zdiff phrases its own."""

    def error(self, message):
        flag = re.match(r"argument (\S+?)(?:/\S+)?: (.*)$", message, re.DOTALL)
        if not flag:  # "the following arguments are required: spec", "unrecognized arguments: ..."
            raise ZdiffError(message if self.prog == "zdiff" else f"{self.prog}: {message}")
        name, reason = flag.groups()
        choice = re.match(r"invalid choice: (.*?) \(choose from (.*)\)$", reason, re.DOTALL)
        if choice:
            reason = f"must be one of {choice.group(2).replace(chr(39), '')}, got {choice.group(1)}"
        raise ZdiffError(f"{name} {reason}")


def _out_of_range(value, low, high, low_open: bool = False) -> str | None:
    """Why `value` is outside [low, high] (or (low, high]); None inside."""
    if low_open and value <= low:
        return "must be positive" if low == 0 else f"must be greater than {low:g}"
    if value < low:
        return "must not be negative" if low == 0 else f"must be at least {low:g}"
    if value > high:
        return f"must be at most {high:g}"
    return None


def _path(text: str) -> str:
    """A path argument: an empty one would silently mean the default or the working directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (leave the flag out for the default)")
    return text


def _int_in(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        reason = _out_of_range(value, low, high)
        if reason:
            raise argparse.ArgumentTypeError(f"{reason}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _proposals(text: str) -> int | str:
    """--proposals: auto, or a block count (checked against the spec's levels when the engine starts)."""
    if text == "auto":
        return text
    return _int_in(0, limits.SPEC_MAXIMUM["diffusion.proposals"])(text)


def _verify_lengths(text: str) -> tuple[int, ...]:
    """--verify-lengths: comma-separated d (drafts verified per step; checked against the block size when the
    engine starts)."""
    parse = _int_in(1, limits.SPEC_MAXIMUM["diffusion.block_size"] - 1)
    return tuple(parse(part) for part in text.split(","))


def _expert_budgets(text: str) -> tuple[int | None, ...]:
    """--expert-budgets: comma-separated "off" (no budget) or m (the verify rows' experts plus m by router mass)."""
    parse = _int_in(0, limits.SPEC_MAXIMUM["model.moe.num_experts"])
    return tuple(None if part == "off" else parse(part) for part in text.split(","))


def _speculation_flags(parser) -> None:
    """The engine's captured (d, budget) options, shared by generate and serve."""
    parser.add_argument("--verify-lengths", type=_verify_lengths, metavar="D,...",
                        help="drafts verified per step the engine may use, each 1..b-1 (default: b-1; with "
                             "--proposals auto also 1, 3, 7, ...); the policy picks one per step")
    parser.add_argument("--expert-budgets", type=_expert_budgets, metavar="off|M,...",
                        help="draft-row expert budgets the engine may use (mixture of experts only; default: off, "
                             "and with --proposals auto also 0): the draft rows route among the experts the "
                             "verify rows chose plus M; lossless")


def _device(text: str) -> str:
    """--device: cpu, cuda or cuda:N (whether that device exists is checked when the command starts)."""
    if re.fullmatch(r"cpu|cuda(:\d{1,4})?", text):
        return text
    raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")


def _float_in(low: float, high: float, low_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        reason = _out_of_range(value, low, high, low_open)
        if reason:
            raise argparse.ArgumentTypeError(f"{reason}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


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
    spec = import_hf(args.hf_dir, args.out_dir, force=args.force, dtype=dtype, allow_nonfinite=args.allow_nonfinite)
    print(f"imported {spec.name} ({spec.model.attention.kind}, {spec.model.num_layers} layers) -> {args.out_dir}")
    return 0


def _cmd_export(args) -> int:
    from .checkpoint.hf_export import EXPORT_DTYPES, export_hf, parse_size

    out = export_hf(args.checkpoint, args.export_dir, dtype=EXPORT_DTYPES[args.dtype] if args.dtype else None,
                    shard_bytes=parse_size(args.shard_size), force=args.force)
    config = json.loads((out / "config.json").read_text())
    print(f"exported {args.checkpoint} as {config['model_type']} ({config['dtype']}) -> {out}")
    return 0


def _cmd_compile(args) -> int:
    from .codegen.compile import compile_spec
    from .spec import load_spec, resolve_spec_path

    spec = load_spec(args.spec)
    compile_spec(spec, args.target, args.out or f"build/{spec.name}/{args.target}", force=args.force,
                 inputs=(resolve_spec_path(args.spec),))
    return 0


def _cmd_train(args) -> int:
    from .outputs import output_lock, resolve_output
    from .train import train
    from .train.mixture import data_inputs
    from .train.run_config import resolve

    actions = {a.dest: a for a in args.train_parser._actions}
    given = {k: v for k, v in vars(args).items() if k in actions}
    cfg = resolve(given, actions, resume=given.get("resume", False), config=given.get("config"))
    # a run directory is written into, not replaced: it must not overlap what it reads, and one run at a time
    resolve_output(cfg.out, inputs=(cfg.init, *data_inputs(cfg.data)), replaces=False)
    # under torchrun only rank 0 writes the run directory, so only it holds the lock
    lock = output_lock(cfg.out) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext()
    with lock:
        train(cfg, resume=given.get("resume", False))
    return 0


def _cmd_tokenize(args) -> int:
    from .outputs import resolve_output
    from .train.tokenize_corpus import tokenize_corpus, tokenizer_for

    resolve_output(args.out, inputs=(None if args.data == "stdlib" else args.data, args.tokenizer), replaces=False)
    tokenize_corpus(args.data, args.out, tokenizer_for(args.tokenizer), workers=args.workers, field=args.field)
    return 0


def _use_checkpoint(args) -> None:
    """CKPT may be a checkpoint or a `zdiff train` run directory (its final/, else its latest checkpoint, named)."""
    from .checkpoint.store import resolve_checkpoint

    path, note = resolve_checkpoint(args.checkpoint)
    if note:
        print(f"zdiff: note: {note}", file=sys.stderr)
    args.checkpoint = str(path)


def _cmd_generate(args) -> int:
    from .generation.cli_run import run_generate
    from .plots import available as plots_available

    # flag-only conflicts first: nothing is read before they are settled
    if args.histogram and not plots_available():
        raise ZdiffError("--histogram needs matplotlib (pip install 'zdiff[plots]')")
    if len(args.prompt) > limits.MAX_PROMPTS:
        raise ZdiffError(f"--prompt is given {len(args.prompt)} times, at most {limits.MAX_PROMPTS} "
                         "(zdiff.limits.MAX_PROMPTS)")
    _check_mix_weight(args.mix_weight, args.sampler)
    _use_checkpoint(args)
    if args.mix_weight is not None and args.sampler is None:  # the checkpoint's sampler decides
        from .spec import load_spec

        _check_mix_weight(args.mix_weight, load_spec(f"{args.checkpoint}/spec.yaml").sampler.kind)
    return run_generate(args)


def _check_mix_weight(mix_weight, sampler) -> None:
    if mix_weight is not None and sampler is not None and sampler != "logit_mix":
        raise ZdiffError(f"--mix-weight only applies to --sampler logit_mix (the sampler is {sampler})")


def _cmd_chat(args) -> int:
    from .chat import run_chat

    _use_checkpoint(args)
    return run_chat(args)


def _cmd_eval(args) -> int:
    from .eval.cli_run import run_eval

    return run_eval(args)


def _cmd_serve(args) -> int:
    from .serve.cli_run import run_serve

    args.served_model_name = args.served_model_name or args.checkpoint  # the name as the user gave it
    return run_serve(args)


def _cmd_demo(args) -> int:
    from .demo import DemoPlan, run_demo
    from .outputs import output_lock, resolve_output

    names = ("ar_steps", "tidar_steps", "batch_size", "seq_len", "eval_windows", "new_tokens", "prompts", "threads")
    overrides = {name: getattr(args, name) for name in names}
    plan = DemoPlan(**{name: value for name, value in overrides.items() if value is not None})
    resolve_output(args.out, replaces=False)
    with output_lock(args.out):  # one demo per directory: it replaces its ar/ and tidar/ runs
        summary = run_demo(out=args.out, plan=plan, prompt=args.prompt)
    return 0 if summary["verdict"] == "PASS" else 1


def _cmd_cost(args) -> int:
    from .autotune.cost import (
        CostModel,
        cost_report,
        default_acceptance,
        format_cost_report,
        format_step_report,
        load_acceptance,
        step_report,
    )
    from .autotune.routing import load_routing
    from .autotune.targets import target_rates
    from .spec import load_spec

    rates = target_rates(args.target)
    spec = load_spec(args.spec)
    b = spec.diffusion.block_size
    if args.acceptance:
        accept, source = load_acceptance(args.acceptance, b), f"measured ({args.acceptance})"
    else:
        accept, source = default_acceptance(b), "assumed (first draft 0.9, 5% less per slot)"
    routing = load_routing(args.routing, spec.model.moe.num_experts) if args.routing else None
    report = cost_report(spec, rates, args.batch, args.context, accept, max_proposals=args.max_proposals,
                         routing=routing, acceptance_source=source)
    budget_accept = load_acceptance(args.budget_acceptance, b) if args.budget_acceptance else None
    steps = step_report(CostModel(spec, rates, routing=routing), args.batch, args.context, accept,
                        args.max_proposals, budget_accept)
    report["steps"] = steps
    print(json.dumps(report, indent=2) if args.json else format_cost_report(report) + "\n" + format_step_report(steps))
    return 0


def _cmd_autotune(args) -> int:
    from .autotune.tune import autotune, check_environment
    from .spec import load_spec

    check_environment()
    spec = load_spec(args.spec)
    if args.target not in spec.targets:  # --target is one of GPU_TARGETS (argparse), so adding it helps
        raise ZdiffError(f"targets: the spec lists {', '.join(spec.targets)}; add {args.target} to tune for it")
    autotune(spec, args.target, budget=args.budget, out=args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="zdiff",
                            description="TiDAR block-diffusion MoE models: spec -> kernels -> train / generate")
    parser.add_argument("--version", action="version", version=f"zdiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_check_command(sub)
    _add_import_command(sub)
    _add_export_command(sub)
    _add_compile_command(sub)
    _add_train_command(sub)
    _add_tokenize_command(sub)
    _add_generate_command(sub)
    _add_chat_command(sub)
    _add_eval_command(sub)
    _add_serve_command(sub)
    _add_cost_command(sub)
    _add_autotune_command(sub)
    _add_demo_command(sub)
    return parser


def _add_check_command(sub) -> None:
    check = sub.add_parser("check", help="validate a spec; print parameter, FLOP and cache counts")
    check.add_argument("spec", help="spec YAML file, or a preset name (zaya1-8b, zaya1-tiny, qwen3-moe-tiny)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--context", type=_int_in(0, limits.MAX_CONTEXT), default=4096,
                       help="context length for the decode FLOP count")
    check.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="element type for cache sizes")
    check.set_defaults(run=_cmd_check)


def _add_import_command(sub) -> None:
    imp = sub.add_parser("import", help="convert a Hugging Face ZAYA1 / Qwen3-MoE / Llama / Qwen2.5 / Qwen3 "
                         "directory to a zdiff checkpoint")
    imp.add_argument("hf_dir")
    imp.add_argument("out_dir")
    imp.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    imp.add_argument("--dtype", choices=sorted(DTYPES), help="cast weights (default: keep the file's dtype)")
    imp.add_argument("--allow-nonfinite", action="store_true",
                     help="import weights with NaN / inf (refused by default)")
    imp.set_defaults(run=_cmd_import)


def _add_export_command(sub) -> None:
    exp = sub.add_parser("export", help="write a zdiff checkpoint as a Hugging Face directory (zaya / qwen3_moe)")
    exp.add_argument("checkpoint")
    exp.add_argument("export_dir", metavar="out_dir", help="the Hugging Face directory to write")
    exp.add_argument("--dtype", choices=["bf16", "fp32"], help="cast weights (default: keep the checkpoint's)")
    exp.add_argument("--shard-size", default="5GB", help="largest safetensors shard (5GB, 500MB, 2GiB; default 5GB)")
    exp.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    exp.set_defaults(run=_cmd_export)


def _add_compile_command(sub) -> None:
    comp = sub.add_parser("compile", help="render the spec's Triton kernels and compile them ahead of time")
    comp.add_argument("spec")
    comp.add_argument("--target", required=True, choices=COMPILE_TARGETS, help="cpu: sources only")
    comp.add_argument("--out", type=_path, help="output directory (default build/<spec name>/<target>)")
    comp.add_argument("--force", action="store_true", help="replace a non-empty --out")
    comp.add_argument("--tables", metavar="DIR", help=TABLES_HELP)
    comp.set_defaults(run=_cmd_compile)


def _add_train_command(sub) -> None:
    steps = _int_in(1, limits.MAX_STEPS)
    seed = _int_in(0, MAX_SEED)
    # no defaults here: the defaults are TrainConfig's, and a flag left out may come from --config or a resumed run
    tr = sub.add_parser("train", help="train AR, or convert AR -> TiDAR diffusion (--mode tidar --init CKPT)",
                        argument_default=argparse.SUPPRESS)
    tr.add_argument("spec", nargs="?", help="spec YAML or preset name (default: the --init checkpoint's spec)")
    tr.add_argument("--config", help="YAML / JSON file of these settings (a run's run.json works); flags override it")
    tr.add_argument("--data", help="token shards (`zdiff tokenize` output), a mixture A:0.7,B:0.3, or raw text / "
                    "JSONL / Parquet (tokenized once into a cache); 'stdlib' (default): this Python's standard library")
    tr.add_argument("--mode", choices=["ar", "tidar"], help="required")
    tr.add_argument("--init", type=_path, help="zdiff checkpoint to start from, or a run directory (its final/, else "
                    "its latest checkpoint); conversion adds a mask token if needed")
    tr.add_argument("--steps", type=steps, help="required; with --resume a larger value extends the run")
    tr.add_argument("--decay-steps", type=steps, help="length of the cosine decay (default --steps); later steps "
                    "keep its final learning rate")
    tr.add_argument("--out", type=_path, help="required: run directory (checkpoints, metrics.jsonl, loss.png, final/)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped, with its "
                    "saved settings (only --out is needed)")
    tr.add_argument("--batch-size", type=_int_in(1, limits.MAX_BATCH_SIZE),
                    help="global batch (sequences per step; 16)")
    tr.add_argument("--seq-len", type=_int_in(1, limits.MAX_SEQ_LEN), help="default 256")
    tr.add_argument("--lr", type=_float_in(0.0, limits.MAX_LR, low_open=True), help="peak learning rate (1e-3)")
    tr.add_argument("--warmup", type=_int_in(0, limits.MAX_STEPS), help="default 50")
    tr.add_argument("--min-lr-ratio", type=_float_in(0.0, 1.0), help="default 0.1")
    tr.add_argument("--weight-decay", type=_float_in(0.0, limits.MAX_WEIGHT_DECAY), help="default 0.1")
    tr.add_argument("--clip", type=_float_in(0.0, limits.MAX_CLIP, low_open=True),
                    help="gradient-norm clipping threshold (1.0)")
    tr.add_argument("--dtype", choices=["fp32", "bf16"], help="compute dtype (fp32; bf16: autocast)")
    tr.add_argument("--checkpoint-every", type=steps, help="default 100")
    tr.add_argument("--eval-every", type=_int_in(0, limits.MAX_STEPS), help="default 0: at the end only")
    tr.add_argument("--eval-windows", type=_int_in(1, limits.MAX_BATCH_SIZE), help="default 64")
    tr.add_argument("--seed", type=seed, help="default 0")
    tr.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 instead of DDP")
    tr.add_argument("--backend", choices=["torch", "triton"], help="torch: the reference model (dense mask); triton: "
                    "the generated kernels (no mask, needs TRITON_INTERPRET=1 on a CPU). Default: triton on a GPU, "
                    "torch on a CPU")
    tr.add_argument("--device", type=_device,
                    help="cpu, cuda or cuda:N (default: this rank's GPU when there is one, else cpu)")
    tr.add_argument("--activation-checkpointing", action="store_true",
                    help="recompute each layer's activations in backward (long sequences)")
    tr.add_argument("--threads", type=_int_in(1, 1024), help="torch intra-op threads (default: OMP_NUM_THREADS, "
                    "else the core count); results are bit-identical only at the same count")
    tr.add_argument("--draft-expert-budget", type=_int_in(0, 1 << 16), metavar="M",
                    help="TiDAR: mask blocks route among the experts of the clean rows that verify them at decode "
                    "time, plus M by router mass (train drafts for the decode-time expert budget)")
    tr.add_argument("--tables", metavar="DIR", help=TABLES_HELP)
    tr.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files to OUT/tensorboard "
                    "(needs zdiff[tensorboard])")
    tr.set_defaults(run=_cmd_train, train_parser=tr)


def _add_tokenize_command(sub) -> None:
    tok = sub.add_parser("tokenize", help="text / JSONL / Parquet / datasets -> memory-mapped token shards + manifest "
                         "for `zdiff train --data`")
    tok.add_argument("data", help="a file or directory (text, .jsonl[.gz|.zst], .parquet, a datasets save_to_disk "
                     "directory), or 'stdlib'")
    tok.add_argument("out", help="the shard directory (a killed run resumes into it)")
    tok.add_argument("--tokenizer", default="bytes", help="'bytes' (the tiny specs' byte-level ids, default), a "
                     "checkpoint or run directory with tokenizer.json, or a tokenizer.json file")
    tok.add_argument("--field", default="text", help="the text field of JSONL records / Parquet and Arrow columns")
    tok.add_argument("--workers", type=_int_in(1, limits.MAX_WORKERS), default=1, help="tokenizer processes")
    tok.set_defaults(run=_cmd_tokenize)


def _add_generate_command(sub) -> None:
    seed = _int_in(0, MAX_SEED)
    gen = sub.add_parser("generate", help="decode prompts with AR or TiDAR and report T/NFE, tokens/s, acceptance")
    gen.add_argument("checkpoint", help="a zdiff checkpoint, or a run directory (its final/, else latest checkpoint)")
    gen.add_argument("--prompt", action="append", required=True, type=_prompt,
                     help="repeat for a batch of prompts")
    gen.add_argument("--sampler", choices=SAMPLERS, help="default: the spec's")
    gen.add_argument("--mix-weight", type=_float_in(0.0, 1.0),
                     help="logit_mix weight w (default: the spec's, else 0.5; 1 = lossless)")
    gen.add_argument("--temperature", type=_float_in(0.0, limits.SPEC_MAXIMUM["sampler.temperature"]),
                     help="0: greedy decoding (as --sampler greedy and the server's temperature 0)")
    gen.add_argument("--top-k", type=_int_in(0, limits.SPEC_MAXIMUM["sampler.top_k"]), help="0: off")
    gen.add_argument("--top-p", type=_float_in(0.0, 1.0, low_open=True), help="(0, 1]; 1: off")
    gen.add_argument("--mode", choices=["ar", "tidar"], default="tidar")
    gen.add_argument("--max-new-tokens", type=_int_in(1, limits.MAX_NEW_TOKENS), default=64)
    gen.add_argument("--seed", type=seed, default=0)
    gen.add_argument("--device", type=_device, help="cpu, cuda or cuda:N (default: cuda when a GPU is visible)")
    gen.add_argument("--dtype", choices=sorted(DTYPES), help="weights and activations (default: bf16 on a GPU, fp32 "
                     "on the CPU)")
    gen.add_argument("--backend", choices=["triton", "torch"],
                     help="generated kernels or the reference model (default: triton on a GPU, torch on a CPU)")
    gen.add_argument("--proposals", type=_proposals, default="auto",
                     help="proposal blocks per step: auto (the cost model and measured acceptance) or 0..P")
    _speculation_flags(gen)
    gen.add_argument("--verify-length", type=_int_in(0, limits.SPEC_MAXIMUM["diffusion.block_size"] - 1), default=0,
                     help="each request verifies at most D drafts per step (one of the verify lengths; 0: the "
                          "policy's choice)")
    gen.add_argument("--expert-budget", choices=["auto", "on", "off"], default="auto",
                     help="each request's draft expert budget: the policy's choice, always, or never")
    gen.add_argument("--allow-nonfinite", action="store_true", help="load a checkpoint with NaN / inf weights")
    gen.add_argument("--max-slots", type=_int_in(1, limits.MAX_BATCH_SIZE),
                     help="engine slots (default: the number of prompts, at most 64)")
    gen.add_argument("--loop", choices=["engine", "reference"], default="engine",
                     help="the decode engine, or the host-driven reference loop (the oracle)")
    gen.add_argument("--verifier", choices=["reference", "fused"],
                     help="fused: the Triton verifier (default on a GPU); reference: the same maths as torch ops "
                          "(default on the CPU)")
    gen.add_argument("--compare-ar", action="store_true", help="also decode with AR and compare")
    gen.add_argument("--histogram", metavar="PNG", help="write the tokens-per-forward histogram")
    gen.add_argument("--json", action="store_true")
    gen.add_argument("--tables", metavar="DIR", help=TABLES_HELP)
    gen.set_defaults(run=_cmd_generate)


def _add_chat_command(sub) -> None:
    seed = _int_in(0, MAX_SEED)
    chat = sub.add_parser("chat", help="talk to a checkpoint in the terminal (its chat template, streamed, the "
                          "sampler switchable between turns with /commands, T/NFE after each answer)")
    chat.add_argument("checkpoint", help="a zdiff checkpoint, or a run directory (its final/, else latest checkpoint)")
    chat.add_argument("--system", help="a system message that starts the conversation")
    chat.add_argument("--mode", choices=["ar", "tidar"], help="default: tidar when the checkpoint has a mask token")
    chat.add_argument("--sampler", choices=SAMPLERS, help="default: the spec's")
    chat.add_argument("--mix-weight", type=_float_in(0.0, 1.0), help="logit_mix weight w (default: the spec's, "
                      "else 0.5)")
    chat.add_argument("--temperature", type=_float_in(0.0, limits.SPEC_MAXIMUM["sampler.temperature"]),
                      help="0: greedy")
    chat.add_argument("--top-k", type=_int_in(0, limits.SPEC_MAXIMUM["sampler.top_k"]), help="0: off")
    chat.add_argument("--top-p", type=_float_in(0.0, 1.0, low_open=True), help="(0, 1]; 1: off")
    chat.add_argument("--max-new-tokens", type=_int_in(1, limits.MAX_NEW_TOKENS), default=256)
    chat.add_argument("--max-len", type=_int_in(2, limits.MAX_CONTEXT), default=4096,
                      help="tokens of conversation + answer the engine holds")
    chat.add_argument("--seed", type=seed, default=0)
    chat.add_argument("--device", type=_device, help="cpu, cuda or cuda:N (default: cuda when a GPU is visible)")
    chat.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on a GPU, fp32 on the CPU")
    chat.add_argument("--backend", choices=["triton", "torch"],
                      help="generated kernels or the reference model (default: triton on a GPU, torch on a CPU)")
    chat.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template replacing the checkpoint's")
    chat.add_argument("--tables", metavar="DIR", help=TABLES_HELP)
    chat.set_defaults(run=_cmd_chat)


def _add_eval_command(sub) -> None:
    seed = _int_in(0, MAX_SEED)
    ev = sub.add_parser("eval", help="score a checkpoint with lm-eval (pip install \"zdiff[eval]\"): table + JSON")
    ev.add_argument("checkpoint", help="a zdiff checkpoint directory")
    ev.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    ev.add_argument("--include-path", action="append", metavar="DIR",
                    help="a directory of lm-eval task YAML files (e.g. tests/lm_eval_tasks); repeatable")
    ev.add_argument("--mode", choices=["ar", "tidar"], default="ar", help="decoding for generate_until tasks")
    ev.add_argument("--sampler", choices=SAMPLERS, help="default: the spec's")
    ev.add_argument("--mix-weight", type=_float_in(0.0, 1.0), help="logit_mix weight w (1 = lossless)")
    ev.add_argument("--temperature", type=_float_in(0.0, limits.SPEC_MAXIMUM["sampler.temperature"], low_open=True))
    ev.add_argument("--seed", type=seed, default=0)
    ev.add_argument("--limit", type=_int_in(1, 1 << 30), help="at most this many documents per task")
    ev.add_argument("--num-fewshot", type=_int_in(0, 1024))
    ev.add_argument("--batch-size", type=_int_in(1, limits.MAX_BATCH_SIZE), default=16, help="sequences per forward")
    ev.add_argument("--max-gen-toks", type=_int_in(1, limits.MAX_NEW_TOKENS), default=256,
                    help="generate_until budget when a task gives none")
    ev.add_argument("--device", choices=["cuda", "cpu"], help="default: cpu")
    ev.add_argument("--output", metavar="JSON", help="write lm-eval's results (with the decoding settings) here")
    ev.add_argument("--log-samples", action="store_true", help="keep every document's responses in the JSON")
    ev.set_defaults(run=_cmd_eval)


def _add_serve_command(sub) -> None:
    serve = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (completions, chat, streaming, "
                           "metrics) on the decode engine; needs zdiff[serve]")
    serve.add_argument("checkpoint", help="a zdiff checkpoint, or a run directory (its final/, else latest checkpoint)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=_int_in(0, 65535), default=8000)
    serve.add_argument("--device", type=_device, help="cpu, cuda or cuda:N (default: cuda when a GPU is visible)")
    serve.add_argument("--dtype", choices=sorted(DTYPES), help="weights and activations (default: bf16 on a GPU, "
                       "fp32 on the CPU)")
    serve.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template replacing the checkpoint's")
    serve.add_argument("--backend", choices=["triton", "torch"],
                       help="generated kernels or the reference model (default: triton on a GPU, torch on a CPU)")
    serve.add_argument("--max-slots", type=_int_in(1, limits.MAX_BATCH_SIZE), default=8,
                       help="requests decoded together (continuous batching)")
    serve.add_argument("--max-queue", type=_int_in(0, limits.MAX_BATCH_SIZE), default=64,
                       help="requests waiting for a slot; one more is answered 503")
    serve.add_argument("--max-len", type=_int_in(2, limits.MAX_CONTEXT), default=2048,
                       help="tokens per slot (prompt + completion)")
    serve.add_argument("--proposals", type=_proposals, default="auto",
                       help="proposal blocks per step: auto (the cost model and measured acceptance) or 0..P")
    _speculation_flags(serve)
    serve.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1/*")
    serve.add_argument("--served-model-name", help="the model id clients send (default: CHECKPOINT as given)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--tables", metavar="DIR", help=TABLES_HELP)
    seconds = _float_in(0.0, limits.SERVE_MAX_TIMEOUT_S, low_open=True)
    serve.add_argument("--header-timeout", type=seconds, default=limits.SERVE_HEADER_TIMEOUT_S, metavar="S",
                       help="close a connection whose request head is not complete S seconds after it began "
                            "(default %(default)s)")
    serve.add_argument("--body-timeout", type=seconds, default=limits.SERVE_BODY_TIMEOUT_S, metavar="S",
                       help="close a connection whose request body is not complete S seconds after its head "
                            "(default %(default)s)")
    serve.add_argument("--keep-alive-timeout", type=seconds, default=limits.SERVE_KEEP_ALIVE_S, metavar="S",
                       help="close an idle keep-alive connection after S seconds (default %(default)s)")
    serve.add_argument("--max-header-bytes", type=_int_in(1024, 1 << 20), default=limits.SERVE_MAX_HEADER_BYTES,
                       metavar="N", help="refuse a request head larger than N bytes (default %(default)s)")
    serve.add_argument("--drain-timeout", type=seconds, default=limits.SERVE_DRAIN_S, metavar="S",
                       help="on SIGTERM / Ctrl-C, give requests in flight S seconds to finish, then cancel them; "
                            "a second signal stops at once (default %(default)s)")
    serve.set_defaults(run=_cmd_serve)


def _add_cost_command(sub) -> None:
    cost = sub.add_parser("cost", help="roofline floors of AR and TiDAR forwards on a target; recommended proposals")
    cost.add_argument("spec")
    cost.add_argument("--target", required=True, choices=GPU_TARGETS)
    cost.add_argument("--batch", type=_int_in(1, limits.MAX_BATCH_SIZE), default=1, help="sequences per forward")
    cost.add_argument("--context", type=_int_in(0, limits.MAX_CONTEXT), default=4096, help="cached tokens per sequence")
    cost.add_argument("--acceptance", metavar="FILE", help="JSON histogram of accepted drafts per step "
                      "(zdiff generate --json output or a list); default: a documented assumption")
    cost.add_argument("--max-proposals", type=_int_in(0, limits.SPEC_MAXIMUM["diffusion.proposals"]), default=8,
                      help="largest P to evaluate")
    cost.add_argument("--routing", metavar="FILE", help="JSON routing histogram (python -m zdiff.autotune.routing "
                      "CKPT TEXT); default: uniform routing")
    cost.add_argument("--budget-acceptance", metavar="FILE", help="accepted drafts per step with the draft expert "
                      "budget on (as --acceptance); default: the same as without")
    cost.add_argument("--json", action="store_true")
    cost.set_defaults(run=_cmd_cost)


def _add_autotune_command(sub) -> None:
    tune = sub.add_parser("autotune", help="compile each kernel's config space ahead of time, prune, rank; "
                          "write JSON tables per device")
    tune.add_argument("spec")
    tune.add_argument("--target", required=True, choices=GPU_TARGETS)
    tune.add_argument("--budget", type=_float_in(0.0, limits.MAX_BUDGET_S, low_open=True), default=300.0,
                      help="seconds of wall time (default 300); the best config so far is kept when it runs out")
    tune.add_argument("--out", type=_path, help="tables root (default: $ZDIFF_CACHE/tables, which compile / generate / "
                      "serve / train read before the shipped tables); files go to OUT/<target>/<kernel module>.json")
    tune.set_defaults(run=_cmd_autotune)


def _add_demo_command(sub) -> None:
    steps = _int_in(1, limits.MAX_STEPS)
    demo = sub.add_parser("demo", help="the main job on the embedded default (no downloads)")
    demo.add_argument("--out", type=_path, default="runs/demo",
                      help="where the demo's runs go (its ar/ and tidar/ are replaced)")
    demo.add_argument("--prompt", default="def fibonacci(n):", type=_prompt)
    # defaults live in demo.DemoPlan (sized for a 2-core CPU); these flags shrink it for tests
    for flag in ("--ar-steps", "--tidar-steps"):
        demo.add_argument(flag, type=steps, help="override the demo plan")
    demo.add_argument("--eval-windows", type=_int_in(1, limits.MAX_BATCH_SIZE), help="override the demo plan")
    demo.add_argument("--new-tokens", type=_int_in(1, limits.MAX_NEW_TOKENS), help="override the demo plan")
    demo.add_argument("--batch-size", type=_int_in(1, limits.MAX_BATCH_SIZE), help="override the demo plan")
    demo.add_argument("--seq-len", type=_int_in(1, limits.MAX_SEQ_LEN), help="override the demo plan")
    demo.add_argument("--prompts", type=_int_in(1, limits.MAX_PROMPTS), help="override the demo plan")
    demo.add_argument("--threads", type=_int_in(1, 1024), help="override the demo plan (default 2; results are "
                      "bit-identical only at the same count)")
    demo.set_defaults(run=_cmd_demo)


def _prompt(text: str) -> str:
    if len(text) > limits.MAX_PROMPT_CHARS:
        raise argparse.ArgumentTypeError(f"is {len(text)} characters, at most {limits.MAX_PROMPT_CHARS} "
                                         "(zdiff.limits.MAX_PROMPT_CHARS)")
    return text


def _check_utf8(argv: list[str]) -> None:
    """Arguments the OS gave as bytes that are not UTF-8 arrive as lone surrogates; refuse them up front."""
    for i, arg in enumerate(argv):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise ZdiffError(f"argument {i + 1} is not valid UTF-8: '{shown}'") from None


@contextlib.contextmanager
def _tables_flag(tables: str | None):
    """--tables DIR as $ZDIFF_TABLES (read by every generated model this command loads), for this command only:
    main() may run in a longer-lived process (tests, notebooks)."""
    if tables is None:
        yield
        return
    from .autotune.tables import TABLES_ENV, table_roots

    before = os.environ.get(TABLES_ENV)
    os.environ[TABLES_ENV] = tables
    try:
        table_roots()  # a missing directory is refused now, not at the first kernel launch
        yield
    finally:
        if before is None:
            os.environ.pop(TABLES_ENV, None)
        else:
            os.environ[TABLES_ENV] = before


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    """zdiff's own warnings as one `zdiff: warning: ...` line; everyone else's as Python prints them."""
    if issubclass(category, ZdiffWarning):
        print(f"zdiff: warning: {_one_line(str(message))}", file=sys.stderr)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    warnings.showwarning = _show_warning
    try:
        _check_utf8(argv)
        args = build_parser().parse_args(argv)
        with _tables_flag(getattr(args, "tables", None)):
            return args.run(args)
    except BrokenPipeError:
        # the reader went away (`zdiff check --json | head -1`): what it wanted was printed, nothing to report;
        # stdout goes to /dev/null so that the interpreter's final flush does not fail a second time
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ZdiffError as err:
        print(f"zdiff: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system said no (permissions, a full disk, ...): not a zdiff bug
        where = f": {err.filename}" if err.filename else ""
        print(f"zdiff: error: {_one_line(err.strerror or str(err))}{where}", file=sys.stderr)
        return 2


def _one_line(message: str) -> str:
    return " ".join(message.split("\n"))


if __name__ == "__main__":
    sys.exit(main())
