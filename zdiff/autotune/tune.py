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
  benchmark hook (`BENCH[entry](bucket, config) -> zero-argument callable` that runs the entry's
  real host launcher with `config`; codegen/host/<family>.py): `triton.testing.do_bench` median
  (it clears the L2 between runs) of every config in the space order, JIT-compiled on the device
  without the AOT step (the launch is the check: spills show up as time); a config whose launch
  fails is pruned ("launch error");
- static otherwise: `static_score`, an estimated time from the resource report and the
  shape (see there); the table is marked "static".
The tile that covers an entry's bucket comes from the family's `bucket_tile(plan, kernel)`
(a config key, a fixed int, or None when the bucket is a loop inside one program).

Budget (seconds of wall time, compiles and measurements alike), in two passes:
1. every entry point's default config is compiled (and measured) first, in order, which also
   tells what one trial of that entry costs;
2. round robin, one alternative per entry per round, each started only if the entry's mean trial
   time still fits before the deadline (so the run ends within its budget), so every entry gets
   about the same number of alternatives whatever its compiles cost; alternatives are ordered
   by how few keys they change from the default (a local search around the hand-tuned
   config), then by tile padding over the buckets.
Entry points whose table the host code never reads (a family's `tuned(plan, kernel)` is
False, e.g. attention's `_fwd_split` / `_combine`) get their default checked and no table.
The summary says what the budget cut.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..codegen.aot import check_fits, compile_entry
from ..codegen.families import family, plan_kernels
from ..codegen.plan import KernelModule, KernelPlan
from ..codegen.render import no_line_info, render_modules
from ..errors import ZdiffError
from ..limits import MAX_BUDGET_S
from ..outputs import output_lock
from ..spec import Spec
from ..targets import TARGETS, Target, device_matches, get_target, interpreter_refused, triton_interpreter
from ..user_dirs import user_tables_root
from .tables import table_body, write_tables

MIN_OCCUPANCY = {"hip": 1, "cuda": 4}  # waves per SIMD (AMD) / warps per SM (NVIDIA)
GOOD_OCCUPANCY = {"hip": 2, "cuda": 16}  # enough to hide memory latency in the static score
TILE_OVERHEAD_ROWS = 16  # a program's fixed cost (index math, prologue, epilogue) in rows of work


@dataclass
class Trial:
    config: dict
    is_default: bool
    report: object | None = None  # ResourceReport
    pruned: str | None = None  # why, when dropped
    seconds: float = 0.0  # compile (+ measurement) wall time
    times: dict = field(default_factory=dict)  # bucket -> measured ms


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
    tuned: bool = True  # False: the host never reads this entry's table (default checked only)
    pending: list = field(default_factory=list)  # alternatives not compiled yet

    @property
    def survivors(self) -> list[Trial]:
        return [t for t in self.trials if t.pruned is None]


def check_environment() -> None:
    if triton_interpreter():
        raise ZdiffError(interpreter_refused("autotuning (it compiles ahead of time)"))


def prune_reason(report, config: dict) -> str | None:
    """Why a compiled config is dropped (None: it stays)."""
    try:
        check_fits(report, json.dumps(config, sort_keys=True))
    except ZdiffError as err:
        return "spills" if "spills" in str(err) else "shared memory"
    backend = TARGETS[report.target].backend
    if report.occupancy < MIN_OCCUPANCY[backend]:
        return "occupancy"
    return None


def bucket_tile(plan, kernel: str, config: dict) -> int | None:
    """Rows of the bucketed dimension one program covers; None when the bucket is a loop inside one
    program (no grid dimension covers it). The family's `bucket_tile(plan, kernel)` returns a config key,
    a fixed int or None."""
    key = family(plan.family).bucket_tile(plan, kernel)
    if key is None or isinstance(key, int):
        return key
    return int(config[key])


def bucket_serial(plan, kernel: str) -> bool:
    """Is the bucket covered by a loop inside each program (attention's keys: `bucket_loop`) rather than by
    the grid?"""
    return family(plan.family).bucket_loop(plan, kernel)


def static_score(report, config: dict, bucket: int, tile: int | None, rates: Target,
                 serial: bool = False) -> float:
    """Estimated time (arbitrary units, lower is better) of one launch over `bucket` rows.

    programs = ceil(bucket / tile) run in waves of (compute units x programs resident per unit,
    from the occupancy of the resource report); each wave costs (tile + TILE_OVERHEAD_ROWS)
    rows of work, slowed down when occupancy is too low to hide latency. This charges tile
    padding (a 128-row tile for 16 rows), wave quantisation and low occupancy, and rewards
    large tiles only when there is enough work to fill the card. tile None (the bucket is a loop
    inside one program): one program over the whole bucket, so only occupancy separates configs.
    serial (the bucket is a loop of `tile` steps inside each program, e.g. attention's key loop):
    ceil(bucket / tile) steps one after the other, each (tile + TILE_OVERHEAD_ROWS): padding of the
    last step and a fixed cost per step, which big tiles amortise."""
    tile = bucket if tile is None else tile
    if serial:
        backend = TARGETS[report.target].backend
        latency = min(1.0, report.occupancy / GOOD_OCCUPANCY[backend])
        return math.ceil(bucket / tile) * (tile + TILE_OVERHEAD_ROWS) / max(latency, 1e-3)
    backend = TARGETS[report.target].backend
    warps = max(1, report.num_warps)
    per_unit = report.occupancy * 4 // warps if backend == "hip" else report.occupancy // warps
    slots = rates.compute_units * max(1, per_unit)
    programs = math.ceil(bucket / tile)
    waves = math.ceil(programs / slots)
    latency = min(1.0, report.occupancy / GOOD_OCCUPANCY[backend])
    return waves * (tile + TILE_OVERHEAD_ROWS) / max(latency, 1e-3)


def _distance(config: dict, default: dict) -> int:
    """How many keys of the default a config changes."""
    return sum(config.get(k) != v for k, v in default.items()) + len(set(config) - set(default))


def _pre_score(config: dict, tile: int | None, buckets: list[int]) -> float:
    """Order of compilation (before any report): padding waste summed over the buckets."""
    waste = sum(math.ceil(b / tile) * tile / b for b in buckets) if tile else len(buckets)
    return waste + 0.01 * config.get("num_stages", 2)


def _compile(module, entry: str, target: str, trial: Trial) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, trial.report = compile_entry(module, entry, target, trial.config)
    except Exception as err:  # a config the compiler rejects is pruned, not fatal
        trial.pruned = f"compile error ({err.__class__.__name__})"
        return
    trial.pruned = prune_reason(trial.report, trial.config)


BENCH_WARMUP_MS, BENCH_REP_MS = 10, 40  # short runs: the budget pays for every (config, bucket) pair


def _measure(module: KernelModule, entry: str, bucket: int, config: dict) -> float:
    """Median ms of `module.BENCH[entry](bucket, config)` (the hook allocates its inputs on the device)."""
    import triton.testing

    fn = module.BENCH[entry](bucket, config)
    fn()  # JIT-compiles for the device outside the timed runs
    return float(triton.testing.do_bench(fn, warmup=BENCH_WARMUP_MS, rep=BENCH_REP_MS, return_mode="median"))


def _run_trial(module, result: EntryResult, target: str, trial: Trial, measure: bool) -> None:
    """Static: compile ahead of time and prune. Measured: JIT-compile on the device and time every bucket
    (the AOT compile would double the compile time the budget pays for). Failures prune the config."""
    began = time.monotonic()
    if not measure:
        _compile(module, result.entry, target, trial)
    else:  # on the device the launch is the check (a spill shows up as time): no second, AOT compile
        try:
            for bucket in result.buckets:
                trial.times[bucket] = _measure(module, result.entry, bucket, trial.config)
        except Exception as err:  # out of resources at launch, a hook that does not fit this bucket, ...
            trial.pruned = f"launch error ({err.__class__.__name__})"
            trial.times.clear()
    trial.seconds = time.monotonic() - began
    result.trials.append(trial)


def _rank(result: EntryResult, plan, target: str) -> None:
    """Best survivor per bucket: lowest measured time, else lowest static score; ties go to the config
    closest to the default (fewest changed keys), the default itself first."""
    survivors = result.survivors
    if not survivors or not result.tuned:
        return  # nothing fits: the entry keeps its default (and `zdiff compile` will say why)
    rates = TARGETS[target]
    default = next((t.config for t in result.trials if t.is_default), {})
    for bucket in result.buckets:
        if result.method == "measured":
            scored = [(t.times[bucket], _distance(t.config, default), j) for j, t in enumerate(survivors)]
        else:
            serial = bucket_serial(plan, result.entry)
            scored = [(static_score(t.report, t.config, bucket, bucket_tile(plan, result.entry, t.config), rates,
                                    serial), _distance(t.config, default), j) for j, t in enumerate(survivors)]
        result.best[bucket] = survivors[min(scored)[2]].config


def prepare_entries(module: KernelModule, plan: KernelPlan, target: str,
                    measure: bool = False) -> list[EntryResult]:
    """One EntryResult per entry point, its default first and the alternatives in compile order."""
    kernels = family(plan.family)
    results = []
    for entry in module.AOT:
        buckets = list(kernels.buckets(plan, entry))
        default = dict(module.CONFIGS[entry])
        tuned = kernels.tuned(plan, entry)
        space = [dict(c) for c in kernels.config_space(plan, entry, target)] if tuned else []
        others = [c for c in space if c != default]
        can_measure = measure and entry in module.BENCH
        # the default's neighbours first (a local search around the hand-tuned config), then least padding
        others.sort(key=lambda c: (_distance(c, default), _pre_score(c, bucket_tile(plan, entry, c), buckets)))
        result = EntryResult(plan.name, entry, len(space), buckets, tuned=tuned)
        result.pending = [Trial(c, False) for c in others]
        result.method = "measured" if can_measure else "static"
        results.append(result)
    return results


def _fits(result: EntryResult, deadline: float) -> bool:
    """Would one more trial of this entry, at its mean trial time so far, end before the deadline?"""
    spent = [t.seconds for t in result.trials if getattr(t, "seconds", None)]
    expected = sum(spent) / len(spent) if spent else 0.0
    return time.monotonic() + expected <= deadline


def run_schedule(modules, target: str, deadline: float, measure: bool = False, bar=None) -> list[EntryResult]:
    """Both budget passes over (plan, module) pairs; returns the ranked EntryResults in order.

    Pass 1 runs every entry's default; pass 2 goes round robin, one alternative per entry per round, until
    the deadline or every space is done, so entries get about the same number of alternatives whatever a
    compile costs. An alternative starts only when the entry's mean trial time so far still fits before the
    deadline, so only pass 1 (the defaults) can overrun it, and only when the budget is too small for them."""
    entries = []  # (plan, module, result)
    for plan, module in modules:
        entries.extend((plan, module, r) for r in prepare_entries(module, plan, target, measure))
    for plan, module, result in entries:  # pass 1: every default
        if time.monotonic() > deadline:
            break
        if measure and not result.tuned:
            continue  # an AOT check of a config no table changes is not worth device time
        _run_trial(module, result, target, Trial(dict(module.CONFIGS[result.entry]), True),
                   result.method == "measured")
        if bar is not None:
            bar.update(1)
    active = [e for e in entries if e[2].trials and e[2].pending and _fits(e[2], deadline)]
    while active:  # pass 2: round robin
        for plan, module, result in active:
            if not _fits(result, deadline):
                continue
            _run_trial(module, result, target, result.pending.pop(0), result.method == "measured")
            if bar is not None:
                bar.update(1)
        active = [e for e in active if e[2].pending and _fits(e[2], deadline)]
    for plan, module, result in entries:
        result.cut_by_budget = len(result.pending) + (0 if result.trials or not result.tuned else 1)
        if bar is not None:
            bar.update(result.cut_by_budget)
        _rank(result, plan, target)
    return [r for _, _, r in entries]


def autotune(spec: Spec, target: str, budget: float = 300.0, out: str | Path | None = None, log=print,
             progress: bool = True, measure: bool | None = None) -> dict:
    """Tune every kernel instance of `spec` for `target`; write one table per module, the device's tables
    replaced as one set (zdiff.autotune.tables). Returns a summary.

    measure None: time the configs when a device of the target is present (`device_matches`)."""
    get_target(target, gpu=True)
    if not budget > 0:  # also refuses NaN
        raise ZdiffError(f"--budget must be positive, got {budget}")
    if budget > MAX_BUDGET_S:
        raise ZdiffError(f"--budget must be at most {MAX_BUDGET_S:g} seconds, got {budget}")
    check_environment()
    start = time.monotonic()
    deadline = start + budget
    measure = device_matches(target) if measure is None else measure
    plans = plan_kernels(spec, "bf16", target)
    # the device's table folder is locked for the whole run; the new set is swapped in at the end. Default: the
    # user's tables ($ZDIFF_CACHE/tables), never the installed package
    out = Path(out) if out is not None else user_tables_root()
    with (output_lock(out / target), tempfile.TemporaryDirectory(prefix="zdiff-autotune-") as tmp,
          no_line_info()):
        modules = render_modules(plans, spec, Path(tmp))
        total = sum(len(family(p.family).config_space(p, e, target)) + 1 for p, m in modules for e in m.AOT)
        with tqdm(total=total, desc=f"autotune {target}", unit="config", disable=not progress, leave=False) as bar:
            results = run_schedule(modules, target, deadline, measure=measure, bar=bar)
        elapsed = time.monotonic() - start
        bodies = {}
        for plan, _ in modules:
            mine = [r for r in results if r.module == plan.name and r.best]
            if mine:
                method = "measured" if all(r.method == "measured" for r in mine) else "static"
                bodies[plan.name] = table_body(target, {r.entry: r.best for r in mine}, method,
                                               extra={"spec": spec.name, "spec_hash": spec.hash()})
        written = [str(p) for p in write_tables(target, bodies, root=out, lock=False)]
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
            "method": r.method if r.tuned else "default only (no table read)",
            "seconds": round(sum(t.seconds for t in r.trials), 1),
            "best": {str(b): c for b, c in r.best.items()},
            "times_ms": {str(b): min(t.times[b] for t in r.survivors) for b in r.best if r.method == "measured"}}


def _short(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(config.items()))


def format_summary(summary: dict) -> str:
    lines = [f"{'entry point':<40} {'space':>5} {'built':>5} {'kept':>5} {'cut':>4} {'sec':>5}  "
             "pruned / best per bucket"]
    for e in summary["entries"]:
        pruned = ", ".join(f"{k}: {v}" for k, v in sorted(e["pruned"].items())) or "-"
        lines.append(f"{e['entry']:<40} {e['space']:>5} {e['compiled']:>5} {e['survivors']:>5} {e['cut_by_budget']:>4}"
                     f" {e['seconds']:>5.0f}  pruned {pruned}; {e['method']}")
        for bucket, config in e["best"].items():
            ms = f" ({e['times_ms'][bucket]:.4f} ms)" if bucket in e.get("times_ms", {}) else ""
            lines.append(f"{'':<40} {'':>29}  {bucket:>6}: {_short(config)}{ms}")
    how = "measured on the device" if summary["measured_on_device"] else "static (no matching device)"
    lines.append(f"{summary['target']}: {len(summary['tables'])} table(s), {how}, "
                 f"{summary['seconds']:.0f} s of a {summary['budget']:.0f} s budget")
    if summary["cut_by_budget"]:
        lines.append(f"budget reached: {summary['cut_by_budget']} config(s) were not compiled; the tables hold the "
                     "best of those that were (rerun with a larger --budget to cover them)")
    if summary["tables"]:
        lines.append(f"tables in {Path(summary['tables'][0]).parent}")
    return "\n".join(lines)
