"""`zdiff generate`: load a checkpoint, decode prompts, print text and statistics."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

from .. import load_model
from ..checkpoint.store import SPEC_FILE
from ..errors import ZdiffError
from ..spec import load_spec
from ..targets import interpreter_needed, triton_interpreter
from ..train.data import Tokenizer
from .api import generate_on_engine
from .loop import GenerationResult
from .loop import generate as reference_loop
from .sampling import SamplingParams


def checkpoint_tokenizer(checkpoint: Path, spec) -> Tokenizer:
    """The checkpoint's tokenizer.json, else the byte-level tokenizer of the tiny specs."""
    tokenizer_json = checkpoint / "tokenizer.json"
    return Tokenizer(tokenizer_json if tokenizer_json.is_file() else None, spec.model.vocab_size)


def stop_tokens_of(checkpoint: Path, tokenizer: Tokenizer) -> tuple[int, ...]:
    if tokenizer.tokenizer_json is None:
        return (tokenizer.byte.eos_id,)
    config = checkpoint / "generation_config.json"
    if config.is_file():
        eos = json.loads(config.read_text()).get("eos_token_id")
        if eos is not None:
            return tuple(eos) if isinstance(eos, list) else (eos,)
    return ()


def stats_table(runs: dict[str, GenerationResult]) -> str:
    rows = [f"{'decoding':<26} {'tokens':>7} {'forwards':>9} {'T/NFE':>7} {'tokens/s':>9}  tokens per forward (1..b)"]
    for name, r in runs.items():
        rows.append(f"{name:<26} {r.total_tokens:>7} {sum(r.forward_passes):>9} {r.tokens_per_forward:>7.2f} "
                    f"{r.tokens_per_second:>9.1f}  {r.histogram()}")
    return "\n".join(rows)


def device_and_backend(args) -> tuple[torch.device, str]:
    """--device / --backend with their defaults: the kernels on a GPU, the reference model on a CPU."""
    on_gpu = torch.cuda.is_available()
    device = torch.device(args.device or ("cuda" if on_gpu else "cpu"))
    if device.type == "cuda" and not on_gpu:
        raise ZdiffError("--device cuda: no CUDA or ROCm device is visible to torch")
    backend = args.backend or ("triton" if device.type == "cuda" else "torch")
    verifier = getattr(args, "verifier", None)  # zdiff serve has no --verifier
    if device.type == "cpu" and not triton_interpreter() and (backend == "triton" or verifier == "fused"):
        raise ZdiffError(interpreter_needed("--backend triton" if backend == "triton" else "--verifier fused"))
    return device, backend


def run_generate(args) -> int:
    checkpoint = Path(args.checkpoint)
    device, backend = device_and_backend(args)
    model = load_model(checkpoint, backend=backend, device=device,
                       dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
                       allow_nonfinite=args.allow_nonfinite)
    spec = load_spec(checkpoint / SPEC_FILE)
    tokenizer = checkpoint_tokenizer(checkpoint, spec)
    params = SamplingParams.from_spec(spec.sampler, kind=args.sampler, mix_weight=args.mix_weight,
                                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if params.kind == "logit_mix" and not 0.0 <= params.mix_weight <= 1.0:
        raise ZdiffError(f"--mix-weight must be in [0, 1], got {params.mix_weight}")
    if params.kind != "greedy" and not params.temperature > 0:
        raise ZdiffError(f"--temperature must be positive, got {params.temperature}")
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
        common.update(proposals=args.proposals, max_slots=args.max_slots, spec=spec, verifier=verifier)
    modes = [args.mode] + (["ar"] if args.compare_ar and args.mode != "ar" else [])
    runs = {}
    for mode in modes:
        with tqdm(total=len(prompts) * args.max_new_tokens, desc=f"generate {mode}", unit="tok", leave=False) as bar:
            def advance(done: int, bar=bar) -> None:
                bar.update(done - bar.n)

            runs[f"{mode} {params.kind}"] = decode(model, prompts, params, mode=mode, progress=advance, **common)
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
