"""`zdiff generate`: load a checkpoint, decode prompts, print text and statistics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint.context import stop_tokens_of
from ..checkpoint.store import SPEC_FILE
from ..checkpoint.tokenizer import Tokenizer
from ..checkpoint.tokenizer import checkpoint_tokenizer as tokenizer_of_checkpoint
from ..errors import ZdiffError
from ..loading import load_model
from ..sampler import SamplerConflict, SamplingParams, sampler_at_temperature
from ..spec import load_spec
from ..targets import interpreter_needed, triton_interpreter
from .api import generate_on_engine
from .engine_device import resolve_device as engine_device
from .oracle import generate as reference_loop
from .result import GenerationResult


def checkpoint_tokenizer(checkpoint: Path, spec) -> Tokenizer:
    """The checkpoint's tokenizer (zdiff.checkpoint.tokenizer: never a silent fall-back to bytes)."""
    return tokenizer_of_checkpoint(checkpoint, spec.model.vocab_size)


def stats_table(runs: dict[str, GenerationResult]) -> str:
    rows = [f"{'decoding':<26} {'tokens':>7} {'forwards':>9} {'T/NFE':>7} {'tokens/s':>9}  tokens per forward (1..b)"]
    for name, r in runs.items():
        rows.append(f"{name:<26} {r.total_tokens:>7} {sum(r.forward_passes):>9} {r.tokens_per_forward:>7.2f} "
                    f"{r.tokens_per_second:>9.1f}  {r.histogram()}")
    return "\n".join(rows)


def resolve_device(requested: str | None) -> torch.device:
    """--device (cpu, cuda, cuda:N; default cuda when a GPU is visible) as a device the engine can run on
    (`engine.resolve_device`'s rule, phrased for the flag)."""
    requested = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return engine_device(requested)
    except ZdiffError as err:
        raise ZdiffError(f"--device {requested}: {str(err).removeprefix('device: ')}") from None


def resolve_dtype(requested: str | None, device: torch.device) -> torch.dtype:
    """--dtype (fp32, bf16, fp16) with its default: bf16 on a GPU, fp32 on the CPU."""
    names = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    return names[requested] if requested else (torch.bfloat16 if device.type == "cuda" else torch.float32)


def device_and_backend(args) -> tuple[torch.device, str]:
    """--device / --backend with their defaults: the kernels on a GPU, the reference model on a CPU."""
    device = resolve_device(args.device)
    backend = args.backend or ("triton" if device.type == "cuda" else "torch")
    verifier = getattr(args, "verifier", None)  # zdiff serve has no --verifier
    if device.type == "cpu" and not triton_interpreter() and (backend == "triton" or verifier == "fused"):
        raise ZdiffError(interpreter_needed("--backend triton" if backend == "triton" else "--verifier fused"))
    return device, backend


def sampling_from_flags(args, spec) -> SamplingParams:
    """--sampler / --temperature / ... over the spec's sampler. Temperature 0 is greedy decoding (as in the
    server and the OpenAI API); logit_mix without a weight uses DEFAULT_MIX_WEIGHT and says so."""
    try:
        kind = sampler_at_temperature(args.sampler, args.temperature)
    except SamplerConflict as err:
        raise ZdiffError(f"--temperature 0 means greedy decoding; --sampler {err.sampler} needs a positive "
                         "temperature") from None
    params = SamplingParams.from_spec(spec.sampler, sampler=kind, mix_weight=args.mix_weight,
                                      temperature=args.temperature or None, top_k=args.top_k, top_p=args.top_p)
    if params.sampler == "logit_mix" and args.mix_weight is None and spec.sampler.mix_weight is None:
        print(f"zdiff: note: logit_mix with its default weight w = {params.mix_weight} (--mix-weight to choose; "
              "w = 1 is the lossless sampler)", file=sys.stderr)
    return params


def run_generate(args) -> int:
    checkpoint = Path(args.checkpoint)
    device, backend = device_and_backend(args)
    model = load_model(checkpoint, backend=backend, device=device, dtype=resolve_dtype(args.dtype, device),
                       allow_nonfinite=args.allow_nonfinite)
    spec = load_spec(checkpoint / SPEC_FILE)
    tokenizer = checkpoint_tokenizer(checkpoint, spec)
    params = sampling_from_flags(args, spec)
    prompts = [tokenizer.encode(p).tolist() for p in args.prompt]
    if any(not p for p in prompts):
        raise ZdiffError("--prompt must not be empty")
    common = dict(diffusion=spec.diffusion, max_new_tokens=args.max_new_tokens, seed=args.seed,
                  stop_tokens=stop_tokens_of(checkpoint, tokenizer))
    if args.loop == "reference":
        decode, common = reference_loop, {**common, "verifier": args.verifier or "reference"}
    else:
        decode = generate_on_engine
        verifier = {None: None, "fused": "fused", "reference": "torch"}[args.verifier]
        common.update(proposals=args.proposals, max_slots=args.max_slots, spec=spec, verifier=verifier,
                      verify_lengths=args.verify_lengths, expert_budgets=args.expert_budgets,
                      verify_length=args.verify_length, expert_budget=args.expert_budget)
    modes = [args.mode] + (["ar"] if args.compare_ar and args.mode != "ar" else [])
    runs = {}
    for mode in modes:
        with tqdm(total=len(prompts) * args.max_new_tokens, desc=f"generate {mode}", unit="tok", leave=False) as bar:
            def advance(done: int, bar=bar) -> None:
                bar.update(done - bar.n)

            runs[f"{mode} {params.sampler}"] = decode(model, prompts, params, mode=mode, progress=advance, **common)
    main = next(iter(runs.values()))
    texts = [tokenizer.decode(t) for t in main.tokens]
    if args.histogram:
        from ..plots import acceptance_histogram

        if not acceptance_histogram(runs, Path(args.histogram), f"{spec.name}: tokens per forward pass"):
            raise ZdiffError("--histogram needs matplotlib (pip install 'zdiff[plots]')")
    if args.json:
        print(json.dumps({"texts": texts, "tokens": main.tokens,
                          "runs": {name: r.summary() for name, r in runs.items()}}, indent=2))
    else:
        for prompt, text in zip(args.prompt, texts):
            print(f"{prompt}{text}")
            print("-" * 40)
        print(stats_table(runs))
    return 0
