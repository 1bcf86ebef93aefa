"""The best lossless acceptance any draft recipe can reach for the first draft of a TiDAR step (issue 20).

A TiDAR step's drafts come from mask rows of the previous forward, which could not see the token that forward's
verifier sampled: the first draft of a step predicts position t + 2 from a context that ends at t, while the
verifier judges it against p(x_{t+2} | x_{<=t+1}) with x_{t+1} the token actually sampled. So even a perfect
drafter outputs one q(y) that cannot depend on x, and its expected lossless acceptance is at most

    ceiling = max_q E_{x ~ p(. | ctx)} [ sum_y min(p(y | ctx, x), q(y)) ],

a property of the verifier's own AR distribution, not of the conversion recipe. The objective is concave and
piecewise linear in q, and separable over y, so the maximum is a fractional knapsack (`best_blind_draft`). The
marginal q(y) = sum_x p(x | ctx) p(y | ctx, x), which distillation toward the model's own AR rows trains the mask
rows toward, is one feasible q and is reported next to it: the best q can beat it (it concentrates on the y that
most x agree on). This script computes both exactly on the acceptance benchmark's held-out prompts (one forward
of ctx, one batch of ctx + [x] for every id x; the mask id is banned as the engine bans it) and prints them next
to the measured first-draft acceptance of the recipe study's rows, so a plateau across recipes can be read
against them.

    PYTHONPATH=. python benchmarks/draft_ceiling.py runs/study/mix-200/final --study runs/study/study.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zdiff.checkpoint.store import load_model  # noqa: E402
from zdiff.checkpoint.tokenizer import checkpoint_tokenizer  # noqa: E402
from zdiff.eval.acceptance import BenchPlan, bootstrap_indices, heldout_prompts, percentile_interval  # noqa: E402
from zdiff.runtime.threads import fixed_threads  # noqa: E402
from zdiff.spec import load_spec  # noqa: E402


def next_token_probs(model, ids: torch.Tensor, banned: int | None) -> torch.Tensor:
    """(B, V) fp64 softmax of the last position's logits, the banned id at probability 0."""
    logits = model(ids)[:, -1].double()
    if banned is not None:
        logits[:, banned] = float("-inf")
    return torch.softmax(logits, dim=-1)


def best_blind_draft(p_x: torch.Tensor, p_y_given_x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(q, its acceptance): the draft distribution q maximising sum_x p_x[x] sum_y min(p_y_given_x[x, y], q[y]).

    For one y the objective grows with q[y] at the rate w(t) = sum of p_x over the x with p(y | x) > t, which falls
    as t passes each value p(y | x): a concave, piecewise linear function with one segment per x. Spending the
    budget sum_y q[y] = 1 on the segments of all y in decreasing order of rate is optimal (fractional knapsack
    over concave pieces), and the segments of one y are then taken in order because their rates fall."""
    values, order = p_y_given_x.sort(dim=0)  # per y, ascending over x
    rates = p_x[order].flip(0).cumsum(0).flip(0)  # segment i of y: the weight of the x at or above values[i, y]
    lengths = torch.diff(values, dim=0, prepend=torch.zeros_like(values[:1]))
    rate, pick = rates.flatten().sort(descending=True, stable=True)
    length = lengths.flatten()[pick]
    taken = (1.0 - (length.cumsum(0) - length)).clamp(0, 1).minimum(length)  # what is left of the budget, capped
    q = torch.zeros(values.numel(), dtype=values.dtype).index_add_(0, pick, taken).view_as(values).sum(0)
    return q, float((rate * taken).sum())


@torch.no_grad()
def first_draft_ceiling(model, context: list[int], banned: int | None, batch: int = 512) -> dict:
    """For one context: the ideal first draft's lossless acceptance, and the entropies (nats) it depends on."""
    V = model.spec.vocab_size
    ctx = torch.tensor([context])
    p1 = next_token_probs(model, ctx, banned)[0]
    p2 = torch.cat([next_token_probs(model, torch.cat([ctx.expand(len(xs), -1), xs[:, None]], 1), banned)
                    for xs in torch.arange(V).split(batch)])  # (V, V): row x = p(. | ctx, x)
    q = p1 @ p2  # the marginal: what self-distillation trains a blind drafter toward
    marginal = (p1 * torch.minimum(p2, q[None, :]).sum(-1)).sum()
    _, best = best_blind_draft(p1, p2)
    entropy = lambda p: float(-(p * p.clamp_min(1e-300).log()).sum(-1).mean())  # noqa: E731
    return {"ceiling": best, "marginal": float(marginal), "entropy_next": entropy(p1), "entropy_marginal": entropy(q),
            "entropy_after_x": float((p1 * -(p2 * p2.clamp_min(1e-300).log()).sum(-1)).sum())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", default="stdlib")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--study", help="study.json of benchmarks/recipe_study.py: print each row's measured acceptance")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    directory = Path(args.checkpoint)
    with fixed_threads(args.threads):
        model = load_model(directory).eval()
        spec = load_spec(directory / "spec.yaml")
        tokenizer = checkpoint_tokenizer(directory, spec.model.vocab_size)
        plan = BenchPlan(prompts=args.prompts, prompt_tokens=args.prompt_tokens)
        _, prompts = heldout_prompts(args.data, tokenizer, plan)
        rows = [first_draft_ceiling(model, prompt, spec.diffusion.mask_token_id) for prompt in prompts]
    ceilings = np.array([r["ceiling"] for r in rows])
    interval = percentile_interval(ceilings[bootstrap_indices(len(ceilings), 0)].mean(-1))
    result = {"checkpoint": str(directory), "prompts": len(rows), "ceiling": float(ceilings.mean()),
              "ceiling_ci95": interval.tolist(),
              **{k: float(np.mean([r[k] for r in rows])) for k in ("marginal", "entropy_next", "entropy_marginal",
                                                                  "entropy_after_x")}}
    print(f"{directory}: the ideal first draft's lossless acceptance {result['ceiling']:.3f} "
          f"[{interval[0]:.3f}, {interval[1]:.3f}] over {len(rows)} held-out prompts (the marginal drafter's "
          f"{result['marginal']:.3f}); entropies (nats): next token "
          f"{result['entropy_next']:.2f}, the token after it given the next {result['entropy_after_x']:.2f}, "
          f"its marginal {result['entropy_marginal']:.2f}")
    if args.study:
        for name, row in json.loads(Path(args.study).read_text()).items():
            measured = row["samplers"]["lossless"]["acceptance_by_position"][0]
            print(f"  {name:22s} measured first-draft acceptance {measured:.3f} ({measured / result['ceiling']:.0%} "
                  "of the ceiling)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
