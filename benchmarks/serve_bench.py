"""`zdiff serve` under load: N concurrent streaming clients on localhost, AR vs TiDAR.

    # CPU, a trained checkpoint (the demo's, or any zdiff checkpoint)
    PYTHONPATH=. python benchmarks/serve_bench.py --checkpoint runs/demo/tidar/final --out bench/serve-cpu
    # GPU, ZAYA1-8B shapes with random weights (bf16 checkpoint written to a temp dir first, ~18 GB)
    PYTHONPATH=. python benchmarks/serve_bench.py --random zaya1-8b --device cuda --out "$OUT" \\
        --concurrency 1,4,16,64 --requests 64 --max-tokens 128
    # smoke (CI): random tiny model, a few requests
    PYTHONPATH=. python benchmarks/serve_bench.py --random zaya1-tiny --smoke --out /tmp/serve-smoke

One server (`zdiff serve` in a child process, --max-slots = the largest concurrency) serves
every cell; the decoding configuration is per request (mode, sampler, mix_weight), so AR,
TiDAR-lossless and TiDAR-logit-mix share the server. Every configuration is first warmed up
at every concurrency (the first step of a new step shape is slow). For each configuration and concurrency
c, c clients (closed loop, `openai.AsyncOpenAI`, streaming) send --requests requests in all.
Measured at the client: time to first token (TTFT), inter-token latency (ITL: time between
stream chunks per token in the chunk; a TiDAR chunk carries every token of one step), and
completion tokens per second over the cell's wall time; at the server (/metrics deltas):
tokens per forward pass. Writes results.json, results.md and serve_bench.png into --out.
Random weights accept few drafts: only a trained checkpoint says what TiDAR buys.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # zdiff is imported inside the functions, from this checkout

CONFIGS = {  # name -> request fields (zdiff extensions of the OpenAI body)
    "ar": {"mode": "ar", "sampler": "lossless"},
    "tidar-lossless": {"mode": "tidar", "sampler": "lossless"},
    "tidar-logit-mix-0.5": {"mode": "tidar", "sampler": "logit_mix", "mix_weight": 0.5},
}
PROMPTS = [
    "def fibonacci(n):",
    "import os\nimport sys\n\n",
    "class Node:\n    def __init__(self",
    "for i in range(",
    "    return self.",
    "# Copyright",
    "def __repr__(self):\n",
    "if __name__ == '__main__':\n",
]
MODEL = "bench"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))}


async def one_request(client, prompt: str, fields: dict, max_tokens: int, seed: int) -> dict:
    start = time.perf_counter()
    stamps, counts, usage = [], [], None
    stream = await client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=max_tokens,
        seed=seed,
        temperature=1.0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={**fields, "return_token_ids": True},
    )
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            ids = (choice.model_extra or {}).get("token_ids") or []
            if ids:
                stamps.append(time.perf_counter())
                counts.append(len(ids))
    gaps = [(b - a) / n for a, b, n in zip(stamps, stamps[1:], counts[1:]) for _ in range(n)]
    return {
        "ttft": stamps[0] - start if stamps else float("nan"),
        "itl": gaps,
        "latency": time.perf_counter() - start,
        "tokens": usage.completion_tokens,
        "forward_passes": usage.model_extra["forward_passes"],
    }


async def run_cell(base_url: str, fields: dict, concurrency: int, requests: int, max_tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=3600)
    jobs = list(range(requests))
    results = []

    async def worker():
        while jobs:
            i = jobs.pop()
            results.append(await one_request(client, PROMPTS[i % len(PROMPTS)], fields, max_tokens, seed=1000 + i))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    await client.close()
    ttft = [r["ttft"] for r in results]
    itl = [g for r in results for g in r["itl"]]
    tokens = sum(r["tokens"] for r in results)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "requests_per_s": len(results) / wall,
        "ttft_ms": {q: 1e3 * percentile(ttft, q) for q in (50, 90, 99)},
        "itl_ms": {q: 1e3 * percentile(itl, q) for q in (50, 90, 99)},
        "request_tokens_per_forward": tokens / max(sum(r["forward_passes"] for r in results), 1),
    }


def random_checkpoint(spec_name: str, directory: Path, dtype: str) -> Path:
    import torch

    from zdiff.checkpoint.store import save_checkpoint
    from zdiff.runtime import build_model
    from zdiff.spec import load_spec

    spec = load_spec(spec_name)
    save_checkpoint(build_model(spec.model, seed=0, dtype=getattr(torch, dtype)), spec, directory / spec_name)
    return directory / spec_name


def bench(args) -> dict:
    from zdiff.serve.launcher import ServerProcess, child_env

    levels = [int(c) for c in args.concurrency.split(",")]
    configs = {name: CONFIGS[name] for name in args.configs.split(",")} if args.configs else CONFIGS
    flags = [
        "--max-slots",
        max(levels),
        "--max-queue",
        max(levels) * 4,
        "--max-len",
        args.max_len,
        "--served-model-name",
        MODEL,
        "--log-level",
        "warning",
    ]
    if args.device:
        flags += ["--device", args.device]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else random_checkpoint(args.random, Path(tmp), args.dtype)
        with ServerProcess(
            checkpoint, *flags, log=Path(args.out) / "server.log", env=child_env(REPO), startup_timeout=1800
        ) as server:
            for fields in configs.values() if not args.smoke else ():  # warm-up: the first step of each
                for c in levels:  # shape pays compiles / graph captures / allocator growth
                    asyncio.run(run_cell(server.base_url, fields, c, c, 4))
            cells = []
            for name, fields in configs.items():
                for c in levels:
                    before = scrape(server.url)
                    cell = asyncio.run(run_cell(server.base_url, fields, c, max(args.requests, c), args.max_tokens))
                    after = scrape(server.url)
                    forwards = after["zdiff_forward_passes_total"] - before["zdiff_forward_passes_total"]
                    generated = after["zdiff_generated_tokens_total"] - before["zdiff_generated_tokens_total"]
                    cell.update(config=name, engine_tokens_per_forward=generated / max(forwards, 1))
                    cells.append(cell)
                    print(
                        f"{name:<22} c={c:<3} {cell['tokens_per_s']:8.1f} tok/s  TTFT p50 {cell['ttft_ms'][50]:8.1f} ms"
                        f"  ITL p50 {cell['itl_ms'][50]:7.1f} ms  T/NFE {cell['request_tokens_per_forward']:.2f}",
                        flush=True,
                    )
    return {
        "checkpoint": args.checkpoint or f"random {args.random} ({args.dtype})",
        "device": args.device or "default",
        "max_tokens": args.max_tokens,
        "requests": args.requests,
        "cells": cells,
        "machine": machine(),
    }


def machine() -> dict:
    import os

    import torch

    info = {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def markdown(data: dict) -> str:
    rows = [
        (
            "| config | clients | requests | tok/s | req/s | TTFT p50 / p90 / p99 ms | ITL p50 / p90 / p99 ms | "
            "tokens per forward (request / engine) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in data["cells"]:
        t, i = c["ttft_ms"], c["itl_ms"]
        rows.append(
            f"| {c['config']} | {c['concurrency']} | {c['requests']} | {c['tokens_per_s']:.1f} | "
            f"{c['requests_per_s']:.2f} | {t[50]:.0f} / {t[90]:.0f} / {t[99]:.0f} | "
            f"{i[50]:.1f} / {i[90]:.1f} / {i[99]:.1f} | {c['request_tokens_per_forward']:.2f} / "
            f"{c['engine_tokens_per_forward']:.2f} |"
        )
    m = data["machine"]
    head = (
        f"{m.get('gpu', 'cpu')}, torch {m['torch']}, {m['cpus']} CPUs, load {m['load_average']:.1f}, {m['date']}; "
        f"{data['checkpoint']}, {data['max_tokens']} new tokens per request"
    )
    return head + "\n\n" + "\n".join(rows) + "\n"


def plot(data: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in dict.fromkeys(c["config"] for c in data["cells"]):
        cells = [c for c in data["cells"] if c["config"] == name]
        x = [c["concurrency"] for c in cells]
        axes[0].plot(x, [c["tokens_per_s"] for c in cells], marker="o", label=name)
        axes[1].plot(x, [c["ttft_ms"][50] for c in cells], marker="o", label=name)
        axes[2].plot(x, [c["itl_ms"][50] for c in cells], marker="o", label=name)
    for ax, title in zip(
        axes, ("completion tokens / s", "time to first token, p50 (ms)", "inter-token latency, p50 (ms)")
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"zdiff serve: {data['checkpoint']} on {data['machine'].get('gpu', 'CPU')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a zdiff checkpoint directory")
    source.add_argument("--random", metavar="SPEC", help="random weights of SPEC (a preset or YAML)")
    parser.add_argument("--dtype", default="float32", help="for --random: float32 or bfloat16")
    parser.add_argument("--device", help="the server's --device (default: its own)")
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--requests", type=int, default=16, help="requests per cell (at least the concurrency)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--configs", help=f"comma-separated subset of: {', '.join(CONFIGS)}")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny: 2 clients, 2 requests of 2 tokens per configuration"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.smoke:
        args.concurrency, args.requests, args.max_tokens, args.max_len = "2", 2, 2, 64
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = bench(args)
    (out / "results.json").write_text(json.dumps(data, indent=2))
    (out / "results.md").write_text(markdown(data))
    plot(data, out / "serve_bench.png")
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
