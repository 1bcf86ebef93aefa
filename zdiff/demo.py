"""The README's main job on the embedded default (no downloads).

Today: check every shipped spec, then run the tiny ZAYA1 reference model on a prompt.
(The model has random weights until `zdiff train` exists, so its continuation is noise:
what the demo shows is that the whole block runs and how fast.)
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from .report import spec_summary
from .runtime import build_model
from .spec import load_spec, preset_names
from .tokenize import ByteTokenizer


def run_demo(prompt: str = "def fibonacci(n):", new_tokens: int = 24, seed: int = 0, out=print) -> dict:
    out("== 1. the shipped specs ==")
    out(f"{'spec':<16} {'total':>12} {'w/o embed':>12} {'active':>12} {'KV B/token':>11}")
    for name in preset_names():
        s = spec_summary(load_spec(name))
        p = s["params"]
        out(f"{name:<16} {p['total']:>12,} {p['without_embeddings']:>12,} "
            f"{p['active_per_token_without_embeddings']:>12,} {s['kv_cache_bytes_per_token']:>11,}")

    spec = load_spec("zaya1-tiny")
    tok = ByteTokenizer()
    torch.manual_seed(seed)
    model = build_model(spec.model, seed=seed).eval()
    ids = torch.tensor([tok.encode(prompt)])
    out(f"\n== 2. reference model {spec.name} (random weights, seed {seed}), greedy, {new_tokens} tokens ==")
    start = time.perf_counter()
    with torch.no_grad():
        for _ in tqdm(range(new_tokens), desc="decode (full recompute)", unit="tok", leave=False):
            next_id = model(ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    seconds = time.perf_counter() - start
    continuation = ids[0, len(tok.encode(prompt)):].tolist()
    out(f"prompt       {prompt!r}")
    out(f"continuation {tok.decode(continuation)!r}  (ids {continuation[:8]}...)")
    out(f"{new_tokens / seconds:.1f} tokens/s on the CPU without a KV cache")
    return {"continuation": continuation, "tokens_per_s": new_tokens / seconds}
