"""The README's main job on the embedded default (no downloads).

1. check every shipped spec;
2. train the tiny ZAYA1 spec as an AR model on this Python's standard library source;
3. convert it into a TiDAR block-diffusion model (training from the AR checkpoint);
4. report held-out AR loss (bits per byte) before and after the conversion, and the
   diffusion loss: the claim under test is "conversion without systematic loss of AR quality".
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint.atomic import atomic_write_text
from .checkpoint.store import load_model
from .report import spec_summary
from .spec import load_spec, preset_names
from .tokenize import ByteTokenizer
from .train import TrainConfig, train

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


def run_demo(out: str = "runs/demo", plan: DemoPlan = DemoPlan(), prompt: str = "def fibonacci(n):",
             log=print) -> dict:
    started = time.perf_counter()
    log("== 1. the shipped specs ==")
    log(f"{'spec':<16} {'total':>14} {'w/o embed':>14} {'active':>13} {'KV B/token':>11}")
    for name in preset_names():
        s = spec_summary(load_spec(name))
        p = s["params"]
        log(f"{name:<16} {p['total']:>14,} {p['without_embeddings']:>14,} "
            f"{p['active_per_token_without_embeddings']:>13,} {s['kv_cache_bytes_per_token']:>11,}")

    root = Path(out)
    for stage in ("ar", "tidar"):  # the demo owns these two run directories
        shutil.rmtree(root / stage, ignore_errors=True)
    common = dict(spec="zaya1-tiny", data="stdlib", batch_size=plan.batch_size, seq_len=plan.seq_len,
                  eval_windows=plan.eval_windows, checkpoint_every=100, warmup=30)

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

    model = load_model(root / "tidar" / "final").eval()
    tok = ByteTokenizer()
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        for _ in range(48):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    sample = tok.decode(ids[0, len(tok.encode(prompt)):].tolist())
    log(f"\ngreedy AR sample of the converted model:\n{prompt}{sample}")
    log(f"\nloss curves: {root / 'ar' / 'loss.png'}, {root / 'tidar' / 'loss.png'}")

    summary = {"ar": ar, "tidar": td, "ar_bits_per_byte_change": change, "verdict": verdict,
               "plan": plan.__dict__, "seconds": time.perf_counter() - started, "sample": sample}
    atomic_write_text(root / "summary.json", json.dumps(summary, indent=1))
    log(f"demo finished in {summary['seconds'] / 60:.1f} min; summary in {root / 'summary.json'}")
    return summary
