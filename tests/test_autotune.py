"""zdiff autotune: static pruning (LDS limits differ between gfx942 and gfx950), the static score,
JSON tables (round trip, nearest bucket, apply_tables), and the CLI end to end on a tiny spec.

AOT compilation needs the real Triton compiler, so the compiling tests run in subprocesses
with TRITON_INTERPRET=0 (this suite's conftest turns the interpreter on in-process)."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest

from conftest import REPO, run_cli
from zdiff.autotune import tune
from zdiff.autotune.tables import apply_tables, load_tables, read_table, write_table
from zdiff.autotune.targets import TARGETS
from zdiff.codegen.aot import ResourceReport
from zdiff.codegen.launch import pick_config
from zdiff.errors import ZdiffError

# A tiny generated-module look-alike: storing a transposed tile converts the layout through
# LDS, tile_r * tile_c * 4 bytes of it. 128 x 256 fp32 = 128 KiB: over gfx942's 64 KiB,
# under gfx950's 160 KiB.
SYNTHETIC = '''
import triton
import triton.language as tl

TABLES = {}


@triton.jit
def synth_transpose(X, Y, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.arange(0, BLOCK_R)
    c = tl.arange(0, BLOCK_C)
    x = tl.load(X + r[:, None] * BLOCK_C + c[None, :])
    tl.store(Y + c[:, None] * BLOCK_R + r[None, :], tl.trans(x))


CONFIGS = {"synth_transpose": {"BLOCK_R": 64, "BLOCK_C": 64, "num_warps": 4}}
AOT = {"synth_transpose": (synth_transpose, {"X": "*fp32", "Y": "*fp32", "BLOCK_R": "constexpr",
                                             "BLOCK_C": "constexpr"}, {})}
'''

PRUNE_SCRIPT = textwrap.dedent('''
    import json, sys, warnings
    from pathlib import Path
    from zdiff.autotune.tune import prune_reason
    from zdiff.codegen.aot import compile_entry
    from zdiff.codegen.render import load_module
    module = load_module(Path(sys.argv[1]), "synth_transpose_module")
    out = {}
    for target in ("mi300x", "mi355x"):
        for name, config in (("small", {"BLOCK_R": 64, "BLOCK_C": 64, "num_warps": 4}),
                             ("big", {"BLOCK_R": 128, "BLOCK_C": 256, "num_warps": 8})):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, report = compile_entry(module, "synth_transpose", target, config)
            out[f"{target}/{name}"] = [report.shared_bytes, prune_reason(report, config)]
    print(json.dumps(out))
''')


def _python(script, *args, env_extra=None):
    import os

    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_a_config_over_the_lds_limit_is_pruned_on_gfx942_but_kept_on_gfx950(tmp_path):
    path = tmp_path / "synth.py"
    path.write_text(SYNTHETIC)
    result = _python(PRUNE_SCRIPT, path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["mi300x/big"][0] > 64 * 1024 and out["mi300x/big"][1] == "shared memory"
    assert 64 * 1024 < out["mi355x/big"][0] <= 160 * 1024 and out["mi355x/big"][1] is None
    assert out["mi300x/small"][1] is None and out["mi355x/small"][1] is None


def _report(target="mi300x", occupancy=4, spills=0, shared=0, warps=4):
    return ResourceReport("k", target, "gfx942", warps, 64, 16, spills, shared, True, occupancy, 1000)


def test_prune_rules_on_reports():
    assert tune.prune_reason(_report(spills=3), {}) == "spills"
    assert tune.prune_reason(_report(shared=65 * 1024), {}) == "shared memory"
    assert tune.prune_reason(_report(occupancy=0), {}) == "occupancy"
    assert tune.prune_reason(_report(), {}) is None
    assert tune.prune_reason(_report("h100", occupancy=2), {}) == "occupancy"  # under 4 warps per SM


def test_static_score_charges_padding_and_rewards_big_tiles_only_with_work():
    rates = TARGETS["mi300x"]
    small, big = _report(), _report()
    # 16 rows: a 128-row tile pads 8x; 1M rows: the big tile amortises its overhead
    assert tune.static_score(small, {}, 16, 16, rates) < tune.static_score(big, {}, 16, 128, rates)
    assert tune.static_score(big, {}, 1 << 20, 128, rates) < tune.static_score(small, {}, 1 << 20, 16, rates)
    # same tile, lower occupancy: slower
    slow = tune.static_score(_report(occupancy=1), {}, 1 << 20, 64, rates)
    assert slow > tune.static_score(_report(), {}, 1 << 20, 64, rates)


def test_table_round_trip_nearest_bucket_and_apply(tmp_path):
    a, b = {"ROWS": 4, "num_warps": 2}, {"ROWS": 64, "num_warps": 8}
    path = write_table("mi300x", "rmsnorm_d128", {"rmsnorm_d128_bwd": {1024: b, 64: a}}, "static", root=tmp_path,
                       extra={"spec": "t"})
    body = json.loads(path.read_text())
    assert path == tmp_path / "mi300x" / "rmsnorm_d128.json"
    assert body["device"] == "mi300x" and body["method"] == "static" and body["triton_version"] and body["date"]
    assert set(body["kernels"]["rmsnorm_d128_bwd"]) == {"64", "1024"}  # strings on disk
    tables = load_tables("mi300x", root=tmp_path)
    assert tables == {"rmsnorm_d128": {"rmsnorm_d128_bwd": {64: a, 1024: b}}}
    assert load_tables("mi355x", root=tmp_path) == {}

    default = {"ROWS": 16, "num_warps": 4}
    module = SimpleNamespace(CONFIGS={"rmsnorm_d128_bwd": default, "rmsnorm_d128_fwd": {"num_warps": 4}}, TABLES={})
    other = SimpleNamespace(CONFIGS={"x_fwd": {}}, TABLES={})
    assert apply_tables({"rmsnorm_d128": module, "other": other}, "mi300x", root=tmp_path) == ["rmsnorm_d128_bwd"]
    assert other.TABLES == {}
    def pick(n, entry="rmsnorm_d128_bwd"):
        return pick_config(module.TABLES, entry, n, module.CONFIGS[entry])
    assert pick(1) == a and pick(500) == a and pick(600) == b and pick(10 ** 6) == b
    assert pick(544) == a  # equidistant: the smaller bucket
    assert pick(500, "rmsnorm_d128_fwd") == {"num_warps": 4}  # no table: the default


def test_malformed_tables_are_errors(tmp_path):
    bad = tmp_path / "mi300x" / "k.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"method": "static", "kernels": {"k_fwd": {"many": {}}}}))
    with pytest.raises(ZdiffError, match="integer buckets"):
        read_table(bad)
    bad.write_text("{")
    with pytest.raises(ZdiffError, match="not readable JSON"):
        load_tables("mi300x", root=tmp_path)


def test_autotune_cli_end_to_end_within_budget(tmp_path):
    """Every kernel family planned today, on the tiny spec: norm tables fully tuned, slower families cut
    by the budget with their best-so-far kept, and the run ends near its budget. Without --out the tables go to
    the user's $ZDIFF_CACHE/tables (never into the installed package), where generated models find them."""
    start = time.monotonic()
    cache = {"ZDIFF_CACHE": str(tmp_path / "cache")}
    result = run_cli("autotune", "zaya1-tiny", "--target", "mi355x", "--budget", "8",
                     env_extra={"TRITON_INTERPRET": "0", **cache})
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    assert elapsed < 8 + 30  # the budget, plus one in-flight compile and start-up
    assert "static (no matching device)" in result.stdout
    norm = read_table(tmp_path / "cache" / "tables" / "mi355x" / "rmsnorm_d128.json")
    assert norm["method"] == "static" and norm["device"] == "mi355x" and norm["spec"] == "zaya1-tiny"
    rows = norm["kernels"]["rmsnorm_d128_bwd"]
    assert sorted(rows) == [64, 1024, 16384] and all({"ROWS", "num_warps"} <= set(c) for c in rows.values())
    # the tables load into freshly rendered modules
    script = textwrap.dedent('''
        import sys
        from pathlib import Path
        from zdiff.autotune.tables import apply_tables
        from zdiff.codegen.families.norms import norm_plan
        from zdiff.codegen.render import load_module, render
        from zdiff.spec import load_spec
        plan = norm_plan("rmsnorm", 128, "bf16")
        path = Path(sys.argv[1]) / "m.py"
        path.write_text(render(plan, load_spec("zaya1-tiny")))
        module = load_module(path, plan.name)
        module.TABLES = getattr(module, "TABLES", {})
        print(sorted(apply_tables({plan.name: module}, "mi355x")))  # the default root: the user's tables
    ''')
    loaded = _python(script, tmp_path, env_extra=cache)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert "rmsnorm_d128_bwd" in loaded.stdout and "rmsnorm_d128_fwd" in loaded.stdout


def test_autotune_cli_refuses_the_interpreter(tmp_path):
    result = run_cli("autotune", "zaya1-tiny", "--target", "mi300x", "--out", tmp_path,
                     env_extra={"TRITON_INTERPRET": "1"})
    assert result.returncode == 2 and "TRITON_INTERPRET=1 is set" in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1


def test_autotune_argument_errors():
    from zdiff.spec import load_spec

    spec = load_spec("zaya1-tiny")
    with pytest.raises(ZdiffError, match="--target must be one of"):
        tune.autotune(spec, "tpu")
    with pytest.raises(ZdiffError, match="--budget must be positive"):
        tune.autotune(spec, "mi300x", budget=0)
    with pytest.raises(ZdiffError, match="TRITON_INTERPRET=1 is set"):  # this suite runs with the interpreter on
        tune.autotune(spec, "mi300x")


# --- benchmark hooks, bucket tiles, the measured path -------------------------------------------------------

def _render_modules(tmp_path, spec_name="zaya1-tiny", dtype="fp32", target="cpu"):
    from zdiff.codegen.families import plan_kernels
    from zdiff.codegen.render import render_modules
    from zdiff.spec import load_spec

    spec = load_spec(spec_name)
    return spec, render_modules(plan_kernels(spec, dtype, target), spec, tmp_path, f"{tmp_path.name}_")


def test_every_entry_point_has_a_bench_hook_or_a_documented_skip_and_the_hooks_run_on_the_cpu(tmp_path):
    """Each hook builds its inputs and launches its entry (the interpreter, device="cpu", the module's default
    config); the decode `_fwd_split` / `_combine` are the only skips; nothing runs at import."""
    spec, modules = _render_modules(tmp_path)
    buckets = {"norms": 4, "moe": 16, "cca": 8, "attention": 4 * spec.diffusion.block_size}
    skipped = set()
    for plan, module in modules:
        assert set(module.AOT) == set(module.BENCH) | set(module.BENCH_SKIPPED), plan.name
        assert not set(module.BENCH) & set(module.BENCH_SKIPPED)
        skipped |= set(module.BENCH_SKIPPED)
        for entry, make in module.BENCH.items():
            extra = {"batch": 1} if plan.family in ("attention", "cca") else {}
            fn = make(buckets[plan.family], module.CONFIGS[entry], device="cpu", **extra)
            assert callable(fn)
            fn()
    assert skipped == {"attention_decode_q4k2_d32_b8_fwd_split", "attention_decode_q4k2_d32_b8_combine"}


def test_every_bench_hook_launches_its_entry_with_the_given_config(tmp_path, monkeypatch):
    """A hook's callable runs the host's launcher with the config it was given (not the table's or the default):
    with a marker config (num_warps=3, a value no default uses) some launch of the callable carries exactly that
    config's tunables and options. Launches are recorded, not run."""
    import triton.runtime.interpreter as interpreter
    import triton.runtime.jit as jit

    from zdiff.codegen.launch import launch_kwargs

    launched = []
    for cls in (jit.JITFunction, interpreter.InterpretedFunction):
        monkeypatch.setattr(cls, "run", lambda self, *args, **kwargs: launched.append(kwargs))
    spec, modules = _render_modules(tmp_path)
    buckets = {"norms": 4, "moe": 16, "cca": 8, "attention": 4 * spec.diffusion.block_size}
    hooks = 0
    for plan, module in modules:
        for entry, make in module.BENCH.items():
            config = {**module.CONFIGS[entry], "num_warps": 3}
            extra = {"batch": 1} if plan.family in ("attention", "cca") else {}
            fn = make(buckets[plan.family], config, device="cpu", **extra)
            launched.clear()  # launches that build the hook's inputs (a forward for the backward hooks)
            fn()
            expected = launch_kwargs(config)
            assert any(all(k.get(key) == value for key, value in expected.items()) for k in launched), entry
            hooks += 1
    assert hooks == sum(len(m.BENCH) for _, m in modules) > 20


def test_bucket_tiles_follow_the_dimension_each_family_buckets():
    from zdiff.codegen.families import plan_kernels
    from zdiff.spec import load_spec

    plans = {p.name: p for p in plan_kernels(load_spec("zaya1-8b"), "bf16", "mi300x")}
    cfg = {"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_T": 16, "ROWS": 4, "BLOCK_P": 64, "BLOCK_Q": 64, "BLOCK_S": 32,
           "num_warps": 4}
    def tile(name, suffix):
        return tune.bucket_tile(plans[name], f"{name}_{suffix}", cfg)
    # attention buckets keys per sequence: the key loop's BLOCK_N, not the row tile
    assert tile("attention_training_q8k2_d128_b16", "fwd") == 32 and tile("attention_decode_q8k2_d128_b16", "fwd") == 32
    training = "attention_training_q8k2_d128_b16"
    assert tile(training, "bwd_dq") == 32 and tile(training, "bwd_dkdv") == 32
    cca = next(n for n in plans if n.startswith("cca_"))
    assert tile(cca, "fwd") == 16 and tile(cca, "bwd") == 16 and tile(cca, "bwd_weight") is None
    experts = next(n for n in plans if n.startswith("moe_experts"))
    assert tile(experts, "gate_up") == 128 and tile(experts, "down") == 64 and tile(experts, "down_small") == 16
    assert tile(experts, "ddown_bwd") is None and tile(experts, "dispatch") is None
    assert tile(next(n for n in plans if n.startswith("moe_router")), "fwd") == 1
    assert tile("rmsnorm_d2048", "fwd") == 1 and tile("rmsnorm_d2048", "bwd") == 4
    # attention's keys are a loop inside each program (forward, dQ), a grid dimension for dK/dV: with the
    # same resources a 128-key step beats a 32-key one at 4096 keys (fewer fixed costs per key), and a
    # 16-key bucket is not padded to 128
    assert tune.bucket_serial(plans["attention_decode_q8k2_d128_b16"], "attention_decode_q8k2_d128_b16_fwd")
    assert tune.bucket_serial(plans["attention_training_q8k2_d128_b16"], "attention_training_q8k2_d128_b16_bwd_dq")
    assert not tune.bucket_serial(plans[training], f"{training}_bwd_dkdv")
    assert not tune.bucket_serial(plans["rmsnorm_d2048"], "rmsnorm_d2048_fwd")
    rates = TARGETS["mi300x"]
    def score(bucket, tile, **kw):
        return tune.static_score(_report(), {}, bucket, tile, rates, serial=True, **kw)
    assert score(4096, 128) < score(4096, 64) < score(4096, 32)
    assert score(16, 32) < score(16, 128)
    assert tune.static_score(_report(occupancy=1), {}, 4096, 128, rates, serial=True) > score(4096, 128)
    assert tune.static_score(_report(), {}, 16, None, rates) == tune.static_score(_report(), {}, 16, 16, rates)


def test_ties_go_to_the_config_closest_to_the_default():
    """`_rank` itself: among equally fast (measured) or equally scored (static: same report, same tile)
    survivors the default wins, and without it the config changing the fewest of its keys wins, whatever the
    order of the trials; a faster config beats them all."""
    from zdiff.codegen.families.norms import norm_plan

    plan = norm_plan("rmsnorm", 128, "fp32")
    default, near, far = {"num_warps": 4}, {"num_warps": 2}, {"num_warps": 8, "num_stages": 3}

    def best(method, configs, with_default, fast=None):
        result = tune.EntryResult(plan.name, f"{plan.name}_fwd", len(configs), [64, 1024], method=method)
        for config in configs:
            if config is default and not with_default:  # compiled and pruned: it still defines "closest"
                result.trials.append(tune.Trial(dict(config), True, pruned="spills"))
                continue
            ms = 0.5 if config is fast else 1.0
            result.trials.append(tune.Trial(dict(config), config is default, report=_report(),
                                            times={64: ms, 1024: ms}))
        tune._rank(result, plan, "mi300x")
        assert result.best[64] == result.best[1024]
        return result.best[64]

    for method in ("measured", "static"):
        for order in ([far, near, default], [default, near, far], [near, far, default]):
            assert best(method, order, with_default=True) == default
            assert best(method, order, with_default=False) == near
        assert best("measured", [default, near, far], with_default=True, fast=far) == far


def test_the_measured_path_times_every_survivor_through_the_bench_hooks(tmp_path, monkeypatch):
    """A device of the target 'present' (mocked), AOT reports faked (the interpreter cannot compile ahead of
    time in-process), do_bench replaced by a CPU timer: every config runs its hook per bucket and the fastest
    per bucket wins; a hook that fails prunes its config."""
    import functools

    import triton.testing

    from zdiff.codegen.families.norms import norm_plan
    from zdiff.codegen.render import load_module, render
    from zdiff.spec import load_spec

    plan = norm_plan("rmsnorm", 128, "fp32")
    path = tmp_path / "m.py"
    path.write_text(render(plan, load_spec("zaya1-tiny")))
    module = load_module(path, f"bench_{tmp_path.name}")
    calls, real = [], dict(module.BENCH)

    def fake_make(entry, bucket, config):
        calls.append((entry, bucket, config.get("ROWS"), config["num_warps"]))
        if config.get("ROWS") == 64:
            raise RuntimeError("out of resources")
        return functools.partial(real[entry], device="cpu")(bucket, config)

    monkeypatch.setattr(module, "BENCH", {e: functools.partial(fake_make, e) for e in module.BENCH})

    def fake_compile(mod, entry, target, trial):
        trial.report = _report("mi300x", warps=trial.config["num_warps"])
        trial.pruned = None

    def fake_bench(fn, warmup=None, rep=None, return_mode="median"):
        fn()
        return 1.0 / calls[-1][3]  # more warps: "faster"

    monkeypatch.setattr(tune, "_compile", fake_compile)
    monkeypatch.setattr(triton.testing, "do_bench", fake_bench)
    from zdiff.codegen.families import FAMILIES

    norms = FAMILIES["norms"]
    monkeypatch.setitem(FAMILIES, "norms", dataclasses.replace(norms, buckets=lambda plan, kernel: [4, 8]))
    results = tune.run_schedule([(plan, module)], "mi300x", time.monotonic() + 60, measure=True)
    by_entry = {r.entry: r for r in results}
    fwd, bwd = by_entry["rmsnorm_d128_fwd"], by_entry["rmsnorm_d128_bwd"]
    assert fwd.method == bwd.method == "measured"
    assert fwd.best == {4: {"num_warps": 8}, 8: {"num_warps": 8}}  # the largest of mi300x's [2, 4, 8]
    assert all(t.times for t in fwd.trials)
    assert {t.pruned for t in bwd.trials} == {None, "launch error (RuntimeError)"}
    assert all(c["ROWS"] != 64 and c["num_warps"] == 8 for c in bwd.best.values())
    summary = tune._entry_summary(fwd)
    assert summary["times_ms"] == {"4": 0.125, "8": 0.125}
    assert "(0.1250 ms)" in tune.format_summary({"target": "mi300x", "seconds": 1, "budget": 60,
                                                 "measured_on_device": True, "tables": [], "cut_by_budget": 0,
                                                 "entries": [summary]})


def test_untabled_entries_get_their_default_only(tmp_path, monkeypatch):
    """The decode attention's `_fwd_split` / `_combine` configs are never read from a table by the host code:
    a run compiles (checks) their default, tries no alternative and ranks nothing for them, so autotune writes
    no table rows for them, while `_fwd` gets alternatives and a best config per bucket."""
    from zdiff.codegen.families.attention import attention_plan
    from zdiff.codegen.render import render_modules
    from zdiff.spec import load_spec

    plan = attention_plan("decode", 2, 2, 32, 8, (0, 2), "fp32", "mi300x")
    [(plan, module)] = render_modules([plan], load_spec("zaya1-tiny"), tmp_path, f"{tmp_path.name}_")
    compiled = []

    def fake_compile(mod, entry, target, trial):
        compiled.append(entry)
        trial.report = _report("mi300x", warps=trial.config["num_warps"])
        trial.pruned = None

    monkeypatch.setattr(tune, "_compile", fake_compile)
    results = {r.entry: r for r in tune.run_schedule([(plan, module)], "mi300x", time.monotonic() + 30)}
    for suffix in ("_fwd_split", "_combine"):
        untabled = results[plan.name + suffix]
        assert compiled.count(plan.name + suffix) == 1 and [t.is_default for t in untabled.trials] == [True]
        assert untabled.best == {} and untabled.space == 0 and untabled.cut_by_budget == 0
    fwd = results[plan.name + "_fwd"]
    assert compiled.count(plan.name + "_fwd") > 1 and set(fwd.best) == {1024, 4096, 32768}


def test_a_device_is_matched_to_its_target_by_name(monkeypatch):
    import torch

    from zdiff.targets import device_matches, device_target

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not device_matches("h200")
    assert device_target("cpu").name == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    for name, target in (("NVIDIA H200", "h200"), ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA A100", "h100")):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert device_target("cuda").name == target
        assert device_matches("h200") == ("H200" in name)
        assert device_matches("h100") == ("H100" in name)
        assert not device_matches("mi300x")
    monkeypatch.setattr(torch.version, "hip", "6.2")
    for arch, target in (("gfx950:sramecc+:xnack-", "mi355x"), ("gfx942:sramecc+:xnack-", "mi300x")):
        props = SimpleNamespace(gcnArchName=arch)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None, props=props: props)
        assert device_target("cuda").name == target


def test_a_generated_attention_module_launches_the_table_config_of_the_nearest_bucket(tmp_path):
    import torch

    from zdiff.codegen.families.attention import attention_plan
    from zdiff.codegen.render import load_module, render
    from zdiff.spec import load_spec

    plan = attention_plan("decode", 2, 1, 16, 4, (0, 1), "fp32", "cpu")
    path = tmp_path / f"{plan.name}.py"
    path.write_text(render(plan, load_spec("zaya1-tiny")))
    module = load_module(path, f"{plan.name}_{tmp_path.name}")
    small = {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 2, "num_stages": 1}
    large = {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 8, "num_stages": 1}
    write_table("mi300x", plan.name, {f"{plan.name}_fwd": {16: small, 256: large}}, "static", root=tmp_path)
    assert apply_tables({plan.name: module}, "mi300x", root=tmp_path) == [f"{plan.name}_fwd"]
    launched = []

    class Spy:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append((grid, kwargs))

    module.HOST.fwd = Spy()  # the host launches the kernel it bound at import
    T = 4 * 3  # verify rows + one block per level
    for capacity in (8, 100, 200, 5000):  # keys per sequence = capacity + T
        q = torch.randn(2, T, 2, 16)
        k = v = torch.randn(2, T, 1, 16)
        cache = torch.randn(2, capacity, 1, 16)
        module.attention_forward(q, k, v, torch.full((2,), capacity), torch.full((2,), 4), torch.full((2,), T),
                                 0.25, cache, cache)
    picked = [(kw["BLOCK_M"], kw["BLOCK_N"], kw["num_warps"]) for _, kw in launched]
    assert picked == [(16, 32, 2), (16, 32, 2), (32, 16, 8), (32, 16, 8)]  # 20, 112 -> 16; 212, 5012 -> 256
    assert launched[2][0][0] == 1  # grid over T * GROUP = 24 packed rows with the 32-row tile


def test_an_alternative_starts_only_when_its_expected_time_fits_the_budget():
    import time

    result = tune.EntryResult(module="m", entry="m_fwd", space=3, buckets=[1])
    result.trials = [tune.Trial({"num_warps": 4}, True, seconds=10.0), tune.Trial({"num_warps": 8}, False, seconds=6.0)]
    now = time.monotonic()
    assert not tune._fits(result, now + 5)  # mean 8 s of trials does not fit in 5 s
    assert tune._fits(result, now + 20)


def test_tables_are_read_from_the_flag_then_the_user_then_the_package(tmp_path, monkeypatch):
    from zdiff.autotune.tables import SHIPPED_TABLES, TABLES_ENV, table_roots, tables_root
    from zdiff.codegen.provenance import render_provenance

    monkeypatch.setenv("ZDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(TABLES_ENV, raising=False)
    assert tables_root("mi300x") == SHIPPED_TABLES  # nothing of the user's yet
    shipped = render_provenance("mi300x")
    assert shipped["tables_dir"] == str(SHIPPED_TABLES / "mi300x")
    write_table("mi300x", "rmsnorm_d128", {"rmsnorm_d128_bwd": {64: {"ROWS": 4, "num_warps": 4}}}, "static",
                root=tmp_path / "cache" / "tables")
    assert tables_root("mi300x") == tmp_path / "cache" / "tables"
    assert tables_root("mi355x") == SHIPPED_TABLES  # a device's set is never mixed with another root's
    assert load_tables("mi300x") == {"rmsnorm_d128": {"rmsnorm_d128_bwd": {64: {"ROWS": 4, "num_warps": 4}}}}
    user = render_provenance("mi300x")
    assert user["tables_dir"] == str(tmp_path / "cache" / "tables" / "mi300x")
    assert user["tables_hash"] != shipped["tables_hash"]  # the render cache re-renders for other tables

    write_table("mi300x", "rmsnorm_d128", {"rmsnorm_d128_bwd": {64: {"ROWS": 8, "num_warps": 2}}}, "static",
                root=tmp_path / "flag")
    monkeypatch.setenv(TABLES_ENV, str(tmp_path / "flag"))
    assert table_roots()[0] == tmp_path / "flag" and tables_root("mi300x") == tmp_path / "flag"
    assert load_tables("mi300x")["rmsnorm_d128"]["rmsnorm_d128_bwd"][64]["ROWS"] == 8
    monkeypatch.setenv(TABLES_ENV, str(tmp_path / "missing"))
    with pytest.raises(ZdiffError, match="is not a directory of autotune tables"):
        tables_root("mi300x")
    monkeypatch.delenv(TABLES_ENV)
    result = run_cli("compile", "zaya1-tiny", "--target", "cpu", "--out", tmp_path / "out", "--tables",
                     tmp_path / "missing")
    assert result.returncode == 2 and "is not a directory of autotune tables" in result.stderr
    assert not (tmp_path / "out").exists()
    from zdiff.cli import main

    assert main(["compile", "zaya1-tiny", "--target", "cpu", "--out", str(tmp_path / "out2"), "--tables",
                 str(tmp_path / "flag")]) == 0
    assert TABLES_ENV not in os.environ  # --tables is for that command only, not for the rest of the process
