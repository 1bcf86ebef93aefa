"""A checkpoint's routing histogram on real text, for the cost model's distinct-experts term
(`zdiff cost --routing FILE`): how often each class (E experts, then the skip expert if the spec has one) is
chosen, summed over the layers, over plain causal chunks of the text.

    python -m zdiff.autotune.routing CHECKPOINT TEXT_FILE [--max-tokens N] [--out routing.json]

The cost model reads one histogram for every layer (the expected distinct experts per layer under it), so
per-layer skew averages out here; the file keeps the per-layer counts too, for inspection.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..errors import ZdiffError
from .cost import read_json


@torch.no_grad()
def routing_counts(model, ids: list[int], chunk: int = 512) -> torch.Tensor:
    """(layers, classes) choice counts of `model` over `ids`, in causal chunks of `chunk` tokens."""
    moe = model.spec.moe
    classes = moe.num_experts + int(moe.skip_expert)
    counts = torch.zeros(model.spec.num_layers, classes, dtype=torch.float64)
    device = model.embed.weight.device
    for start in range(0, len(ids), chunk):
        piece = torch.tensor([ids[start:start + chunk]], device=device)
        out = model(piece, return_routings=True)
        for layer, routing in enumerate(out.routings):
            chosen = routing.experts.flatten().cpu()
            counts[layer] += torch.bincount(chosen, minlength=classes)[:classes].double()
    return counts


def load_routing(path: str | Path, num_experts: int) -> list[float]:
    """A routing histogram from JSON: a list of counts (num_experts, or num_experts + 1 with the skip class
    last) or this module's output ({"histogram": [...]})."""
    data = read_json(path, "--routing")
    if isinstance(data, dict):
        data = data.get("histogram")
    numbers = isinstance(data, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in data)
    if not numbers or len(data) not in (num_experts, num_experts + 1) or min(data) < 0 or not sum(data) > 0:
        raise ZdiffError(f"--routing: {path} must hold {num_experts} (or {num_experts + 1} with the skip expert) "
                         "non-negative counts with a positive sum, or {\"histogram\": [...]}")
    return [float(x) for x in data]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zdiff.autotune.routing", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("text", help="a UTF-8 text file, encoded with the checkpoint's tokenizer")
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--out", help="JSON file to write (default: stdout)")
    args = parser.parse_args(argv)
    from ..checkpoint.context import CheckpointContext
    from ..checkpoint.store import checkpoint_spec, load_model
    from ..outputs import atomic_write_text

    try:
        model = load_model(args.checkpoint).eval()
        context = CheckpointContext.of(Path(args.checkpoint), checkpoint_spec(args.checkpoint))
        if context.tokenizer is None:
            raise ZdiffError(f"{args.checkpoint}: no tokenizer ({context.tokenizer_error})")
        ids = context.tokenizer.encode(Path(args.text).read_text(encoding="utf-8")).tolist()[:args.max_tokens]
        counts = routing_counts(model, ids)
    except (ZdiffError, OSError, UnicodeDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = {"checkpoint": str(args.checkpoint), "tokens": len(ids), "histogram": counts.sum(0).tolist(),
              "per_layer": counts.tolist()}
    text = json.dumps(report, indent=1)
    if args.out:
        atomic_write_text(Path(args.out), text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
