"""The README's main job on the embedded default (no downloads).

1. check every shipped spec, and compile the tiny one for MI300X (Triton sources, the generated
   model, hsaco binaries and their resource report; ahead of time, no GPU needed);
2. train the tiny ZAYA1 spec as an AR model on this Python's standard library source;
3. convert it into a TiDAR block-diffusion model (training from the AR checkpoint);
4. report held-out AR loss (bits per byte) before and after the conversion, and the
   diffusion loss: the claim under test is "conversion without systematic loss of AR quality";
5. decode held-out prompts with AR, TiDAR-lossless and TiDAR-logit_mix: T/NFE with its 95% bootstrap
   interval over prompts (zdiff.eval.acceptance), acceptance by draft position, and tokens/s.

Every stage runs under DemoPlan.threads intra-op threads, whatever OMP_NUM_THREADS says: the CPU's bits
depend on the thread count (zdiff.runtime.threads), so two demos with the same plan give the same numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .checkpoint.atomic import atomic_write_text
from .checkpoint.store import load_model
from .checkpoint.tokenizer import Tokenizer
from .errors import ZdiffError
from .eval.acceptance import sampler_report
from .generation import SamplingParams
from .generation.api import generate_on_engine as generate
from .generation.cli_run import stats_table
from .plots import MISSING as MISSING_PLOTS
from .plots import acceptance_by_position, acceptance_histogram
from .report import spec_summary
from .runtime.threads import fixed_threads
from .spec import load_spec, preset_names
from .tokenize import ByteTokenizer
from .train import TrainConfig, train
from .train.data import split_corpus

AR_QUALITY_TOLERANCE = 0.03  # the converted model's held-out AR loss may be at most 3% worse


@dataclass(frozen=True)
class DemoPlan:
    """Sized for a 2-core CPU: about 5 minutes per training stage."""

    ar_steps: int = 360
    tidar_steps: int = 200
    batch_size: int = 32
    seq_len: int = 128
    ar_lr: float = 3e-3
    tidar_lr: float = 1e-3  # conversion continues from a trained model: a gentler peak
    eval_windows: int = 96
    prompts: int = 64  # held-out prompts decoded (the engine batches them); T/NFE's interval resamples them
    prompt_bytes: int = 64
    new_tokens: int = 128
    mix_weight: float = 0.5
    threads: int = 2  # torch intra-op threads for every stage: fixed, so a rerun reproduces the bits


def _compile_ahead_of_time(spec: str, target: str, out: Path) -> dict:
    """`zdiff compile` in a child process: ahead-of-time compilation needs the real Triton compiler,
    so a TRITON_INTERPRET=1 inherited by the demo (the test suite sets it) must not reach it."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "zdiff", "compile", spec, "--target", target, "--out", str(out),
                             "--force"], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise ZdiffError(f"zdiff compile {spec} --target {target} failed: {result.stderr.strip()[-2000:]}")
    return json.loads((out / "manifest.json").read_text())


def run_demo(out: str = "runs/demo", plan: DemoPlan = DemoPlan(), prompt: str = "def fibonacci(n):",
             log=print) -> dict:
    with fixed_threads(plan.threads):
        return _run_demo(out, plan, prompt, log)


def _run_demo(out: str, plan: DemoPlan, prompt: str, log) -> dict:
    started = time.perf_counter()
    log("== 1. the shipped specs ==")
    log(f"{'spec':<16} {'total':>14} {'w/o embed':>14} {'active':>13} {'KV B/token':>11}")
    for name in preset_names():
        s = spec_summary(load_spec(name))
        p = s["params"]
        log(f"{name:<16} {p['total']:>14,} {p['without_embeddings']:>14,} "
            f"{p['active_per_token_without_embeddings']:>13,} {s['kv_cache_bytes_per_token']:>11,}")

    root = Path(out)
    log("\n== 1b. zdiff compile zaya1-tiny --target mi300x (ahead of time, no GPU) ==")
    manifest = _compile_ahead_of_time("zaya1-tiny", "mi300x", root / "compiled-mi300x")
    for kernel in manifest["kernels"]:
        worst = max(kernel["aot"].values(), key=lambda r: r["registers"])
        log(f"  {kernel['name']:<34} {len(kernel['aot'])} entry point(s), max {worst['registers']} VGPRs, "
            f"{sum(r['spills'] for r in kernel['aot'].values())} spills")
    for stage in ("ar", "tidar"):  # the demo owns these two run directories
        shutil.rmtree(root / stage, ignore_errors=True)
    common = dict(spec="zaya1-tiny", data="stdlib", batch_size=plan.batch_size, seq_len=plan.seq_len,
                  eval_windows=plan.eval_windows, checkpoint_every=100, warmup=30, threads=plan.threads)

    log(f"\n== 2. AR training: zaya1-tiny on the stdlib corpus, {plan.ar_steps} steps ==")
    ar = train(TrainConfig(mode="ar", steps=plan.ar_steps, out=str(root / "ar"), lr=plan.ar_lr, **common), log=log)
    log(f"\n== 3. TiDAR conversion from the AR checkpoint, {plan.tidar_steps} steps ==")
    td = train(TrainConfig(mode="tidar", steps=plan.tidar_steps, out=str(root / "tidar"), lr=plan.tidar_lr,
                           init=str(root / "ar" / "final"), **common), log=log)

    before, after = ar["heldout_ar_bits_per_byte"], td["heldout_ar_bits_per_byte"]
    change = after / before - 1
    verdict = "PASS" if change <= AR_QUALITY_TOLERANCE else "FAIL"
    log("\n== 4. held-out quality (bits per byte = AR loss / ln 2 per byte) ==")
    log(f"{'model':<28} {'AR bits/byte':>13} {'diffusion nats':>15}")
    log(f"{'AR model':<28} {before:>13.4f} {ar['heldout_diffusion_nats']:>15.4f}")
    log(f"{'after TiDAR conversion':<28} {after:>13.4f} {td['heldout_diffusion_nats']:>15.4f}")
    log(f"AR loss change {change:+.2%} (must be <= +{AR_QUALITY_TOLERANCE:.0%}): {verdict}")

    log(f"\n== 5. decoding {plan.prompts} held-out prompts, {plan.new_tokens} new tokens each ==")
    decoding = _compare_decoding(root, plan, prompt, log)

    summary = {"ar": ar, "tidar": td, "ar_bits_per_byte_change": change, "verdict": verdict,
               "plan": plan.__dict__, "decoding": decoding, "seconds": time.perf_counter() - started}
    atomic_write_text(root / "summary.json", json.dumps(summary, indent=1))
    log(f"demo finished in {summary['seconds'] / 60:.1f} min; summary in {root / 'summary.json'}")
    return summary


def _compare_decoding(root: Path, plan: DemoPlan, prompt: str, log) -> dict:
    """AR vs TiDAR-lossless vs TiDAR-logit_mix on held-out prompts: T/NFE and tokens/s."""
    spec = load_spec(root / "tidar" / "final" / "spec.yaml")
    model = load_model(root / "tidar" / "final").eval()
    tok = ByteTokenizer()
    _, heldout = split_corpus("stdlib", Tokenizer(None, spec.model.vocab_size))  # memory-mapped: reads only these
    windows = heldout.windows(plan.prompt_bytes, plan.prompts).tolist()
    prompts = [[t for t in w if t < 256] or [tok.bos_id] for w in windows]
    # the decode engine with the spec's proposal blocks (auto would plan for a GPU's cost model)
    common = dict(diffusion=spec.diffusion, max_new_tokens=plan.new_tokens, seed=0, stop_tokens=(tok.eos_id,),
                  proposals=spec.diffusion.proposals)
    runs = {
        "AR (lossless sampling)": generate(model, prompts, SamplingParams(sampler="lossless"), mode="ar", **common),
        "TiDAR lossless": generate(model, prompts, SamplingParams(sampler="lossless"), mode="tidar", **common),
        f"TiDAR logit_mix w={plan.mix_weight}": generate(
            model, prompts, SamplingParams(sampler="logit_mix", mix_weight=plan.mix_weight), mode="tidar", **common),
    }
    log(stats_table(runs))
    reports = {name: sampler_report(r, r.block_size if r.mode == "tidar" else 1, seed=0) for name, r in runs.items()}
    for name, r in reports.items():
        lo, hi = r["tokens_per_forward_ci95"]
        log(f"{name:<28} T/NFE {r['tokens_per_forward']:.2f}, 95% CI [{lo:.2f}, {hi:.2f}] over {plan.prompts} "
            "prompts; acceptance by draft position " + (" ".join(f"{v:.2f}" for v in r["acceptance_by_position"])
                                                        or "-"))
    acceptance_by_position(reports, root / "acceptance_by_position.png", "tiny ZAYA1 after TiDAR conversion")
    histogram = root / "acceptance.png"
    if acceptance_histogram(runs, histogram, "tiny ZAYA1 after TiDAR conversion: tokens per forward pass"):
        log(f"acceptance histogram: {histogram}")
    else:
        log(f"no acceptance histogram or loss curves: {MISSING_PLOTS}")
    sample = generate(model, [tok.encode(prompt, bos=False)], SamplingParams(sampler="lossless"), mode="tidar",
                      **{**common, "max_new_tokens": 64})
    log(f"\nTiDAR lossless sample:\n{prompt}{tok.decode(sample.tokens[0])}")
    curves = [str(p) for p in (root / "ar" / "loss.png", root / "tidar" / "loss.png") if p.is_file()]
    if curves:
        log(f"\nloss curves: {', '.join(curves)}")
    keep = ("tokens_per_forward_ci95", "acceptance_by_position", "acceptance_by_position_ci95")
    return {name: {**r.summary(), **{k: reports[name][k] for k in keep}} for name, r in runs.items()}
