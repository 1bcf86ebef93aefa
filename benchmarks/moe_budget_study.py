"""Acceptance with and without the draft-row expert budget on a trained tiny MoE (CPU): for each checkpoint,
greedy and lossless TiDAR at batch 1 (the budget is a per-step union over the batch, so batch 1 is where it
restricts most) on byte prompts cut from Python's standard library, with `draft_expert_budget` None / 0 / 1.
Reports T/NFE (tokens per forward) and the accepted-drafts histogram, from which acceptance by position
P(accepted >= j) follows. Usage:

    python benchmarks/moe_budget_study.py CKPT [CKPT ...] [--prompts N] [--new-tokens N] [--out FILE]
"""

from __future__ import annotations

import argparse
import functools
import json
import sysconfig
from pathlib import Path

import torch
from tqdm import tqdm

from zdiff.checkpoint.store import checkpoint_spec, load_model
from zdiff.generation import SamplingParams
from zdiff.generation.oracle import generate
from zdiff.outputs import atomic_write_text
from zdiff.runtime import Transformer
from zdiff.train.data import checkpoint_tokenizer

FILES = ("textwrap.py", "shlex.py", "fractions.py", "statistics.py", "heapq.py", "bisect.py", "calendar.py",
         "difflib.py")


def prompts(tokenizer, count: int, length: int = 96) -> list[list[int]]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(lib / name).read_text(encoding="utf-8") for name in FILES if (lib / name).is_file()]
    out = []
    for i in range(count):
        text = texts[i % len(texts)]
        start = (len(text) // (count + 1)) * (i // len(texts) + 1)
        out.append(tokenizer.encode(text[start:start + length]).tolist())
    return out


def run(model, spec, prompt_ids, sampler: str, budget, new_tokens: int, seed: int) -> dict:
    model.forward = functools.partial(Transformer.forward, model, draft_expert_budget=budget)
    hist, tokens, forwards = [0] * spec.diffusion.block_size, 0, 0
    try:
        for i, ids in enumerate(prompt_ids):
            result = generate(model, [ids], SamplingParams(sampler=sampler), diffusion=spec.diffusion, mode="tidar",
                              max_new_tokens=new_tokens, seed=seed + i)
            for n in result.accepted[0]:
                hist[n] += 1
            tokens += len(result.tokens[0]) - 1  # the prefill's token is not a decode step's
            forwards += result.forward_passes[0] - 1
    finally:
        del model.forward
    return {"sampler": sampler, "budget": budget, "tokens_per_forward": tokens / max(1, forwards),
            "accepted_histogram": hist}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--out", default="runs/moe_budget_study.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = []
    jobs = [(c, s, b) for c in args.checkpoints for s in ("greedy", "lossless") for b in (None, 0, 1)]
    models = {}
    for ckpt, sampler, budget in tqdm(jobs, desc="study"):
        if ckpt not in models:
            spec = checkpoint_spec(ckpt)
            models[ckpt] = (load_model(ckpt).eval(), spec,
                            prompts(checkpoint_tokenizer(Path(ckpt), spec.model.vocab_size), args.prompts))
        model, spec, prompt_ids = models[ckpt]
        report.append({"checkpoint": ckpt, **run(model, spec, prompt_ids, sampler, budget, args.new_tokens, 0)})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out), json.dumps(report, indent=1))
    for r in report:
        budget = "off" if r["budget"] is None else f"m={r['budget']}"
        print(f"{r['checkpoint']:<40} {r['sampler']:<9} budget {budget:<4} T/NFE {r['tokens_per_forward']:.3f} "
              f"accepted {r['accepted_histogram']}")


if __name__ == "__main__":
    main()
