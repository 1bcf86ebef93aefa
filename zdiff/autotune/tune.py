"""`zdiff autotune`: per kernel instance, entry point and shape bucket, the best launch config.

For every plan of `plan_kernels(spec, "bf16", target)` the module is rendered once and
imported; for every entry point the family's `config_space` is compiled ahead of time
(`aot.compile_entry`, one compile per config, shared by all buckets) and pruned statically:
- the compile fails, or the config spills registers / exceeds LDS or shared memory
  (`aot.check_fits`);
- occupancy below MIN_OCCUPANCY (no room for a second wave per SIMD on CDNA, fewer than
  4 warps per SM on Hopper: no latency hiding at all).
Survivors are then ranked per bucket:
- measured, when a device of the target is present and the generated module provides a
  benchmark hook (`BENCH[entry](bucket, config) -> callable`): `triton.testing.do_bench`
  median; no generated template provides the hook yet, so tables are static today;
- static otherwise: `static_score`, an estimated time from the resource report and the
  shape (see there); the table is marked "static".
The budget (seconds of wall time) is shared between entry points as they come (each gets
the remaining time over the remaining entries); the default config is compiled first, so an
entry reached before the budget ends keeps at least a checked default; entries reached after
it get no table (they launch with their defaults), and the summary says what was cut.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..codegen.aot import AOT_TARGETS, check_fits, compile_entry
from ..codegen.compile import _no_line_info
from ..codegen.plan import family_module, plan_kernels
from ..codegen.render import load_module, render
from ..errors import ZdiffError
from ..spec import Spec
from .tables import write_table
from .targets import TargetRates, target_rates

MIN_OCCUPANCY = {"hip": 1, "cuda": 4}  # waves per SIMD (AMD) / warps per SM (NVIDIA)
GOOD_OCCUPANCY = {"hip": 2, "cuda": 16}  # enough to hide memory latency in the static score
TILE_OVERHEAD_ROWS = 16  # a program's fixed cost (index math, prologue, epilogue) in rows of work
BUCKET_TILE_KEYS = ("BLOCK_M", "BLOCK_P", "ROWS")  # tile of the bucketed dimension, if a family does not say


@dataclass
class Trial:
    config: dict
    is_default: bool
    report: object | None = None  # ResourceReport
    pruned: str | None = None  # why, when dropped


@dataclass
class EntryResult:
    module: str
    entry: str
    space: int
    buckets: list[int]
    trials: list[Trial] = field(default_factory=list)
    best: dict = field(default_factory=dict)  # bucket -> config
    method: str = "static"
    cut_by_budget: int = 0

    @property
    def survivors(self) -> list[Trial]:
        return [t for t in self.trials if t.pruned is None]


def check_environment() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise ZdiffError("TRITON_INTERPRET=1 is set, but autotuning compiles ahead of time with the real Triton "
                         "compiler; run it with TRITON_INTERPRET=0 (or unset)")


def prune_reason(report, config: dict) -> str | None:
    """Why a compiled config is dropped (None: it stays)."""
    try:
        check_fits(report, json.dumps(config, sort_keys=True))
    except ZdiffError as err:
        return "spills" if "spills" in str(err) else "shared memory"
    backend = AOT_TARGETS[report.target].backend
    if report.occupancy < MIN_OCCUPANCY[backend]:
        return "occupancy"
    return None


def bucket_tile(plan, kernel: str, config: dict) -> int:
    """Rows of the bucketed dimension one program covers (a family may define `bucket_tile(plan, kernel)`
    naming the key; otherwise the first of BUCKET_TILE_KEYS in the config, else 1 row per program)."""
    family = family_module(plan.family)
    key = family.bucket_tile(plan, kernel) if hasattr(family, "bucket_tile") else next(
        (k for k in BUCKET_TILE_KEYS if k in config), None)
    return int(config.get(key, 1)) if key else 1


def static_score(report, config: dict, bucket: int, tile: int, rates: TargetRates) -> float:
    """Estimated time (arbitrary units, lower is better) of one launch over `bucket` rows.

    programs = ceil(bucket / tile) run in waves of (compute units x programs resident per unit,
    from the occupancy of the resource report); each wave costs (tile + TILE_OVERHEAD_ROWS)
    rows of work, slowed down when occupancy is too low to hide latency. This charges tile
    padding (a 128-row tile for 16 rows), wave quantisation and low occupancy, and rewards
    large tiles only when there is enough work to fill the card."""
    backend = AOT_TARGETS[report.target].backend
    warps = max(1, report.num_warps)
    per_unit = report.occupancy * 4 // warps if backend == "hip" else report.occupancy // warps
    slots = rates.compute_units * max(1, per_unit)
    programs = math.ceil(bucket / tile)
    waves = math.ceil(programs / slots)
    latency = min(1.0, report.occupancy / GOOD_OCCUPANCY[backend])
    return waves * (tile + TILE_OVERHEAD_ROWS) / max(latency, 1e-3)


def _pre_score(config: dict, tile: int, buckets: list[int]) -> float:
    """Order of compilation (before any report): padding waste summed over the buckets."""
    return sum(math.ceil(b / tile) * tile / b for b in buckets) + 0.01 * config.get("num_stages", 2)


def _compile(module, entry: str, target: str, trial: Trial) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, trial.report = compile_entry(module, entry, target, trial.config)
    except Exception as err:  # a config the compiler rejects is pruned, not fatal
        trial.pruned = f"compile error ({err.__class__.__name__})"
        return
    trial.pruned = prune_reason(trial.report, trial.config)


def device_matches(target: str) -> bool:
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        name = torch.cuda.get_device_name(0).upper()
    except Exception:
        return False
    return any(s.upper() in name for s in target_rates(target).device_names)


def _measure(module, entry: str, bucket: int, config: dict) -> float:
    import triton.testing

    fn = module.BENCH[entry](bucket, config)
    return float(triton.testing.do_bench(fn, return_mode="median"))


def tune_module(module, plan, target: str, deadline: float, entries_left: int, bar=None,
                measure: bool = False) -> list[EntryResult]:
    """Compile, prune and rank every entry point of one rendered module."""
    family = family_module(plan.family)
    rates = target_rates(target)
    results = []
    for entry in module.AOT:
        buckets = list(family.buckets(plan, entry))
        default = dict(module.CONFIGS[entry])
        space = [dict(c) for c in family.config_space(plan, entry, target)]
        others = [c for c in space if c != default]
        others.sort(key=lambda c: _pre_score(c, bucket_tile(plan, entry, c), buckets))
        trials = [Trial(default, True)] + [Trial(c, False) for c in others]
        result = EntryResult(plan.name, entry, len(space), buckets)
        share = (deadline - time.monotonic()) / max(1, entries_left)
        entries_left -= 1
        stop = time.monotonic() + share
        for i, trial in enumerate(trials):
            now = time.monotonic()
            if (i and now > stop) or now > deadline:  # the default goes first, unless the whole budget is spent
                result.cut_by_budget = len(trials) - i
                if bar is not None:
                    bar.update(result.cut_by_budget)
                break
            _compile(module, entry, target, trial)
            result.trials.append(trial)
            if bar is not None:
                bar.update(1)
        survivors = result.survivors
        can_measure = measure and entry in getattr(module, "BENCH", {})
        result.method = "measured" if can_measure else "static"
        for bucket in buckets:
            if not survivors:
                break  # nothing fits: the entry keeps its default (and `zdiff compile` will say why)
            if can_measure:
                timed = [(_measure(module, entry, bucket, t.config), j) for j, t in enumerate(survivors)]
                best = survivors[min(timed)[1]]
            else:
                scored = [(static_score(t.report, t.config, bucket, bucket_tile(plan, entry, t.config), rates),
                           not t.is_default, j) for j, t in enumerate(survivors)]
                best = survivors[min(scored)[2]]
            result.best[bucket] = best.config
        results.append(result)
    return results


def autotune(spec: Spec, target: str, budget: float = 300.0, out: str | Path | None = None, log=print,
             progress: bool = True) -> dict:
    """Tune every kernel instance of `spec` for `target`; write one table per module. Returns a summary."""
    if target not in AOT_TARGETS:
        raise ZdiffError(f"--target must be one of {', '.join(AOT_TARGETS)}, got {target!r}")
    if budget <= 0:
        raise ZdiffError(f"--budget must be positive, got {budget}")
    check_environment()
    start = time.monotonic()
    deadline = start + budget
    measure = device_matches(target)
    plans = plan_kernels(spec, "bf16", target)
    results: list[EntryResult] = []
    with tempfile.TemporaryDirectory(prefix="zdiff-autotune-") as tmp, _no_line_info():
        modules = []
        for plan in plans:
            path = Path(tmp) / f"{plan.name}.py"
            path.write_text(render(plan, spec))
            modules.append((plan, load_module(path, plan.name)))
        total = sum(len(family_module(p.family).config_space(p, e, target)) + 1 for p, m in modules for e in m.AOT)
        entries_left = sum(len(m.AOT) for _, m in modules)
        with tqdm(total=total, desc=f"autotune {target}", unit="config", disable=not progress, leave=False) as bar:
            for plan, module in modules:
                done = tune_module(module, plan, target, deadline, entries_left, bar=bar, measure=measure)
                entries_left -= len(done)
                results.extend(done)
    elapsed = time.monotonic() - start
    written = []
    for plan, _ in modules:
        mine = [r for r in results if r.module == plan.name and r.best]
        if not mine:
            continue
        method = "measured" if all(r.method == "measured" for r in mine) else "static"
        written.append(str(write_table(target, plan.name, {r.entry: r.best for r in mine}, method, root=out,
                                       extra={"spec": spec.name, "spec_hash": spec.hash()})))
    cut = sum(r.cut_by_budget for r in results)
    summary = {"target": target, "seconds": elapsed, "budget": budget, "measured_on_device": measure,
               "tables": written, "cut_by_budget": cut, "entries": [_entry_summary(r) for r in results]}
    log(format_summary(summary))
    return summary


def _entry_summary(r: EntryResult) -> dict:
    reasons: dict[str, int] = {}
    for t in r.trials:
        if t.pruned:
            reasons[t.pruned] = reasons.get(t.pruned, 0) + 1
    return {"module": r.module, "entry": r.entry, "space": r.space, "compiled": len(r.trials),
            "survivors": len(r.survivors), "pruned": reasons, "cut_by_budget": r.cut_by_budget,
            "method": r.method, "best": {str(b): c for b, c in r.best.items()}}


def _short(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(config.items()))


def format_summary(summary: dict) -> str:
    lines = [f"{'entry point':<40} {'space':>5} {'built':>5} {'kept':>5} {'cut':>4}  pruned / best per bucket"]
    for e in summary["entries"]:
        pruned = ", ".join(f"{k}: {v}" for k, v in sorted(e["pruned"].items())) or "-"
        lines.append(f"{e['entry']:<40} {e['space']:>5} {e['compiled']:>5} {e['survivors']:>5} {e['cut_by_budget']:>4}"
                     f"  pruned {pruned}; {e['method']}")
        for bucket, config in e["best"].items():
            lines.append(f"{'':<40} {'':>23}  {bucket:>6}: {_short(config)}")
    how = "measured on the device" if summary["measured_on_device"] else "static (no matching device)"
    lines.append(f"{summary['target']}: {len(summary['tables'])} table(s), {how}, "
                 f"{summary['seconds']:.0f} s of a {summary['budget']:.0f} s budget")
    if summary["cut_by_budget"]:
        lines.append(f"budget reached: {summary['cut_by_budget']} config(s) were not compiled; the tables hold the "
                     "best of those that were (rerun with a larger --budget to cover them)")
    if summary["tables"]:
        lines.append(f"tables in {Path(summary['tables'][0]).parent}")
    return "\n".join(lines)
