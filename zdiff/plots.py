"""Plots people would rather look at than read. matplotlib is optional (extra `plots`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def available() -> bool:
    """Whether matplotlib can be imported (the optional extra `plots`)."""
    return _pyplot() is not None


MISSING = "matplotlib is not installed (pip install 'zdiff[plots]')"


def _finish(plt, fig, ax, path: Path, title: str) -> bool:
    """The common end of a one-panel plot: title, grid, legend, an atomic PNG write."""
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    plt.close(fig)
    return True


def _save(fig, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def loss_curve(records: list[dict], path: Path, title: str) -> bool:
    """Training losses per step (and held-out points) -> PNG. False when matplotlib is missing."""
    plt = _pyplot()
    if plt is None or not records:
        return False
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "heldout_ar_nats" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in train]
    ax.plot(steps, [r["ar_loss"] for r in train], lw=0.8, label="AR loss (train)")
    if any(r.get("diffusion_loss") is not None for r in train):
        ax.plot(steps, [r["diffusion_loss"] for r in train], lw=0.8, label="diffusion loss (train)")
        ax.plot(steps, [r["loss"] for r in train], lw=0.8, label="TiDAR loss (train)")
    if evals:
        ax.plot([r["step"] for r in evals], [r["heldout_ar_nats"] for r in evals], "o-", label="AR loss (held-out)")
        if "heldout_diffusion_nats" in evals[0]:
            ax.plot([r["step"] for r in evals], [r["heldout_diffusion_nats"] for r in evals], "s-",
                    label="diffusion loss (held-out)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per token")
    return _finish(plt, fig, ax, path, title)


def acceptance_histogram(results: dict, path: Path, title: str) -> bool:
    """Tokens committed per forward pass, one bar group per decoding run (name -> GenerationResult)."""
    plt = _pyplot()
    if plt is None or not results:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(results)
    for k, (name, result) in enumerate(results.items()):
        counts = result.histogram()
        total = max(1, sum(counts))
        xs = [i + 1 + (k - (len(results) - 1) / 2) * width for i in range(len(counts))]
        ax.bar(xs, [c / total for c in counts], width=width, label=f"{name} (T/NFE {result.tokens_per_forward:.2f})")
    ax.set_xlabel("tokens committed in one forward pass (accepted drafts + 1)")
    ax.set_ylabel("share of decode steps")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    _save(fig, path)
    plt.close(fig)
    return True


def acceptance_by_position(samplers: dict, path: Path, title: str, ceiling: float | None = None) -> bool:
    """Acceptance rate by draft position with 95% intervals, one line per sampler (the acceptance benchmark's
    report: name -> {"acceptance_by_position": [...], "acceptance_by_position_ci95": [[lo, hi], ...]}).
    `ceiling` c (benchmarks/draft_ceiling.py) adds the perfect drafter's rough curve c^j for reference."""
    plt = _pyplot()
    lines = {name: r for name, r in samplers.items() if r["acceptance_by_position"]}
    if plt is None or not lines:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in lines.items():
        rate = r["acceptance_by_position"]
        positions = range(1, len(rate) + 1)
        low = [v - lo for v, (lo, _) in zip(rate, r["acceptance_by_position_ci95"])]
        high = [hi - v for v, (_, hi) in zip(rate, r["acceptance_by_position_ci95"])]
        ax.errorbar(positions, rate, yerr=[low, high], marker="o", capsize=3,
                    label=f"{name} (T/NFE {r['tokens_per_forward']:.2f})")
    if ceiling is not None:
        longest = max(len(r["acceptance_by_position"]) for r in lines.values())
        positions = range(1, longest + 1)
        ax.plot(positions, [ceiling ** j for j in positions], "k--",
                label=f"perfect drafter, first-draft ceiling {ceiling:.2f} to the power j")
    ax.set_xlabel("draft position j (share of decode steps that accepted at least j drafts)")
    ax.set_ylabel("acceptance rate")
    ax.set_ylim(0, 1)
    return _finish(plt, fig, ax, path, title)


def speedup_by_batch(rows: list[dict], path: Path, title: str) -> bool:
    """Projected tokens/s over AR against batch, one panel per target, one line per decoding policy
    (rows: {"target", "batch", "policy", "speedup"}). False when matplotlib is missing."""
    plt = _pyplot()
    if plt is None or not rows:
        return False
    targets = list(dict.fromkeys(r["target"] for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.8), sharey=True, squeeze=False)
    for ax, target in zip(axes[0], targets):
        for policy in policies:
            mine = sorted((r["batch"], r["speedup"]) for r in rows if r["target"] == target and r["policy"] == policy)
            ax.plot([b for b, _ in mine], [s for _, s in mine], "o-", label=policy)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch (sequences per step)")
        ax.set_title(target)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("projected speedup over AR (tokens/s at the floors)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
    plt.close(fig)
    return True
