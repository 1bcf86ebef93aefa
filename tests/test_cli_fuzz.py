"""Fuzz (hypothesis, derandomized, bounded): mutated preset specs and random argument vectors for
every subcommand must end in exit 0, or exit 2 with one line: never a traceback, a hang past the
deadline, a partial output, a lost file or a changed input.

Runs in-process (`zdiff.cli.main(argv)`); `check`, `cost`, `compile` (cpu) and `import` run for real.
`train`, `generate`, `autotune` and `demo` would run for minutes, so their work function is replaced
by a probe that checks what the command line let through lies inside the documented bounds
(zdiff.limits) and that the output rules were applied before it (the real runs have their own tests).
A few vectors also go through `python -m zdiff` in a subprocess. More examples:
ZDIFF_FUZZ_SCALE=10 pytest tests/test_cli_fuzz.py.
"""

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import assert_clean_end, deadline, leftovers, run_main, visible_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from zdiff import limits
from zdiff.cli import build_parser
from zdiff.errors import ZdiffError
from zdiff.spec import parse_spec, preset_names
from zdiff.spec.loader import PRESET_DIR
from zdiff.train.run_config import REQUIRED as TRAIN_REQUIRED

SCALE = float(os.environ.get("ZDIFF_FUZZ_SCALE", "1"))


def _settings(examples: int):
    return settings(max_examples=max(1, int(examples * SCALE)), derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


# --- specs ----------------------------------------------------------------------------------

PRESET_FILES = sorted({p.resolve() for p in [*PRESET_DIR.glob("*.yaml"), *(REPO / "examples/specs").glob("*.yaml")]})
PRESET_TEXTS = [p.read_text() for p in PRESET_FILES]

ODD_VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2, 3, 16, 17, 64, 65, 10**9, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["../x", "a/b", "", " ", "\x00", "é" * 3, "null", "5e6", "true"]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(min_value=-3, max_value=20), max_size=5),
    st.dictionaries(st.sampled_from(["kind", "x", "enabled", "hidden_size"]), st.integers(-2, 5), max_size=2),
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


@st.composite
def mutated_specs(draw):
    data = yaml.safe_load(draw(st.sampled_from(PRESET_TEXTS)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(list(_paths(data))[1:]))
        *parents, leaf = path
        node = data
        for key in parents:
            node = node[key]
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        if action == "delete":
            del node[leaf]
        elif action == "add" and isinstance(node, dict):
            node[draw(st.sampled_from(["extra", "Name", "num_head", leaf]))] = draw(ODD_VALUES)
        else:
            node[leaf] = draw(ODD_VALUES)
        if not isinstance(data, dict):
            break
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@st.composite
def damaged_texts(draw):
    text = draw(st.sampled_from(PRESET_TEXTS))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        at = draw(st.integers(min_value=0, max_value=len(text)))
        piece = draw(st.one_of(st.sampled_from(["&a ", "*a", "[", "]", "{", "}", ": ", "- ", "!!python/object ", "\t",
                                                "\n", "'", '"', "#", "|", ">", "&b [*b]", "<<: *a", "%YAML 1.1\n"]),
                               st.text(max_size=4)))
        cut = draw(st.integers(min_value=0, max_value=3))
        text = text[:at] + piece + text[at + cut:]
    return text


def _load_or_fail_cleanly(text: str) -> None:
    """parse_spec gives a Spec or one-line ZdiffError, within the deadline; an accepted spec then survives
    what check / compile do first with it (anything but a one-line ZdiffError is a failure)."""
    from zdiff.codegen.families import plan_kernels
    from zdiff.report import spec_summary

    with deadline(20):
        try:
            spec = parse_spec(text, source="fuzz.yaml")
            spec_summary(spec, context=4096, dtype_bytes=2)
            plan_kernels(spec, "fp32", "cpu")
        except ZdiffError as err:  # a bad spec, or one the kernels cannot serve (yet)
            assert "\n" not in str(err)


@_settings(120)
@given(text=mutated_specs())
def test_mutated_presets_load_or_fail_cleanly(text):
    _load_or_fail_cleanly(text)


@_settings(120)
@given(text=damaged_texts())
def test_damaged_preset_text_loads_or_fails_cleanly(text):
    _load_or_fail_cleanly(text)


# --- command lines --------------------------------------------------------------------------

PARSER = build_parser()
SUBPARSERS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices
PLAUSIBLE = st.sampled_from(["1", "2", "3", "8", "16", "64", "0.1", "0.5", "1.0", "1e-3"])
NUMBERS = st.one_of(
    PLAUSIBLE,
    PLAUSIBLE,
    st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1", "2", "0.5", "1.5", "1e9", "1e12", "1e-300", str(2**70),
                     "", "abc", "1_000", "0x10", " 3", "1e", "-0"]),
    st.integers(min_value=-10, max_value=10**13).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
PROBED: dict[str, int] = {}  # work functions reached, by command
EXITS: dict[str, set] = {}  # exit statuses seen, by command


class World:
    """The files every vector draws from, under one temporary root (also the working directory)."""

    def __init__(self, root: Path):
        from hf_models import tiny_qwen3_moe
        from zdiff.checkpoint.store import save_checkpoint
        from zdiff.runtime import build_model
        from zdiff.spec import load_spec

        self.root = root
        spec = load_spec("zaya1-tiny")
        self.ck = save_checkpoint(build_model(spec.model, seed=0), spec, root / "ck")
        self.hf = root / "hf"
        tiny_qwen3_moe(0).save_pretrained(self.hf)
        self.tables = root / "tables"
        self.tables.mkdir()
        self.template = root / "chat.jinja"
        self.template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
        (root / "specs").mkdir()
        (root / "specs" / "tiny.yaml").write_text((REPO / "examples/specs/zaya1-tiny.yaml").read_text())
        (root / "specs" / "bad.yaml").write_text("model: {vocab_size: -1}\n")
        (root / "specs" / "binary.yaml").write_bytes(bytes(range(256)))
        (root / "acc").mkdir()
        (root / "acc" / "good.json").write_text("[1, 2, 3, 4]")
        (root / "acc" / "inf.json").write_text("[Infinity, 1]")
        (root / "acc" / "bad.json").write_text("{")
        (root / "plain_file").write_text("a file")
        self.existing = root / "existing"
        self.reset()
        self.inputs = self.snapshot_inputs()
        # outputs that are none of the world's inputs (a --force there may replace them: that is asked for)
        outputs = ["out/a", "out/b", "existing", ".", "..", "plain_file", "plain_file/x", "/proc/zdiff-fuzz"]
        self.positionals = {
            # the specs a CPU compiles first (hypothesis draws early entries most): every command must succeed
            "spec": ["zaya1-tiny", "dense-tiny", *preset_names(), "specs/tiny.yaml", "specs/bad.yaml",
                     "specs/binary.yaml", "nowhere.yaml", "specs", "plain_file", str(root / "ck" / "spec.yaml"), "",
                     "../"],
            "checkpoint": [str(self.ck), "missing", "specs", "plain_file", "", str(self.hf)],
            "hf_dir": [str(self.hf), "missing", "specs", "plain_file", str(self.ck), ""],
            # import's output; "hf" and what is in or around it overlap its input and must be refused
            "out_dir": [*outputs, "hf", "hf/inner", str(root)],
            # tokenize's input and output
            "data": ["plain_file", "specs", "acc", "missing", "out/a", ""],
            "out": outputs,
            # export's output; the checkpoint and what is in or around it must be refused
            "export_dir": [*outputs, "ck", "ck/inner", str(root)],
        }
        self.flag_values = {
            "out": outputs,
            "data": ["plain_file", "specs", "missing", "stdlib", "out/a"],
            "init": [str(self.ck), "missing", "plain_file", "ck"],
            "config": ["acc/good.json", "acc/bad.json", "plain_file", "missing", "specs/tiny.yaml"],
            "tokenizer": ["bytes", str(self.ck), "missing", "plain_file"],
            "acceptance": ["acc/good.json", "acc/inf.json", "acc/bad.json", "acc", "missing"],
            "histogram": ["out/h.png", "plain_file/x.png", "/proc/zdiff.png"],
            "prompt": None,
            "tasks": ["zdiff_python_mc", "zdiff_python_mc,zdiff_python_gen", "", ",", "no_such_task"],
            "include_path": [str(REPO / "tests" / "lm_eval_tasks"), "missing", "plain_file"],
            "output": ["out/scores.json", "plain_file/x.json"],
            # an (empty) autotune tables directory is valid: the shipped set is read for its devices
            "tables": [str(self.tables), str(self.tables), "missing", "plain_file", ""],
            "chat_template": [str(self.template), "missing", "plain_file"],
            "system": ["You write Python.", ""],
        }

    def reset(self):
        import shutil

        shutil.rmtree(self.root / "out", ignore_errors=True)
        if self.existing.exists():
            shutil.rmtree(self.existing)
        self.existing.mkdir()
        (self.existing / "marker.txt").write_text("keep me")

    def snapshot_inputs(self):
        return {str(p): p.stat().st_mtime_ns for d in (self.ck, self.hf, self.root / "specs") for p in d.rglob("*")}


def _probe_train(cfg, resume=False, log=print):
    for name in ("steps", "checkpoint_every"):
        assert 1 <= getattr(cfg, name) <= limits.MAX_STEPS
    assert 0 <= cfg.warmup <= limits.MAX_STEPS and 0 <= cfg.eval_every <= limits.MAX_STEPS
    assert 1 <= cfg.batch_size <= limits.MAX_BATCH_SIZE and 1 <= cfg.seq_len <= limits.MAX_SEQ_LEN
    assert math.isfinite(cfg.lr) and 0 < cfg.lr <= limits.MAX_LR
    assert 0 <= cfg.min_lr_ratio <= 1 and 0 <= cfg.weight_decay <= limits.MAX_WEIGHT_DECAY
    assert math.isfinite(cfg.clip) and 0 < cfg.clip <= limits.MAX_CLIP and cfg.seed >= 0
    cfg.check(1)  # the trainer's own first check
    PROBED["train"] = PROBED.get("train", 0) + 1


def _probe_generate(args):
    assert 1 <= args.max_new_tokens <= limits.MAX_NEW_TOKENS
    assert all(len(p) <= limits.MAX_PROMPT_CHARS for p in args.prompt) and len(args.prompt) <= limits.MAX_PROMPTS
    assert args.temperature is None or (math.isfinite(args.temperature) and args.temperature >= 0)  # 0: greedy
    assert args.top_p is None or 0 < args.top_p <= 1
    assert args.top_k is None or args.top_k >= 0
    assert args.mix_weight is None or (0 <= args.mix_weight <= 1 and args.sampler in (None, "logit_mix"))
    assert args.proposals == "auto" or 0 <= args.proposals <= limits.SPEC_MAXIMUM["diffusion.proposals"]
    assert args.max_slots is None or 1 <= args.max_slots <= limits.MAX_BATCH_SIZE
    _probe_speculation(args)
    assert 0 <= args.verify_length < limits.SPEC_MAXIMUM["diffusion.block_size"]
    assert args.expert_budget in ("auto", "on", "off")
    PROBED["generate"] = PROBED.get("generate", 0) + 1
    return 0


def _probe_speculation(args):
    assert args.verify_lengths is None or all(
        1 <= d < limits.SPEC_MAXIMUM["diffusion.block_size"] for d in args.verify_lengths) and args.verify_lengths
    assert args.expert_budgets is None or all(
        m is None or 0 <= m <= limits.SPEC_MAXIMUM["model.moe.num_experts"] for m in args.expert_budgets)


def _probe_chat(args):
    assert 1 <= args.max_new_tokens <= limits.MAX_NEW_TOKENS and 2 <= args.max_len <= limits.MAX_CONTEXT
    assert args.temperature is None or (math.isfinite(args.temperature) and args.temperature >= 0)
    assert args.top_p is None or 0 < args.top_p <= 1
    assert args.mix_weight is None or 0 <= args.mix_weight <= 1
    PROBED["chat"] = PROBED.get("chat", 0) + 1
    return 0


def _probe_serve(args):
    assert 0 <= args.port <= 65535 and 1 <= args.max_slots <= limits.MAX_BATCH_SIZE
    assert 0 <= args.max_queue <= limits.MAX_BATCH_SIZE and 2 <= args.max_len <= limits.MAX_CONTEXT
    assert args.proposals == "auto" or 0 <= args.proposals <= limits.SPEC_MAXIMUM["diffusion.proposals"]
    _probe_speculation(args)
    PROBED["serve"] = PROBED.get("serve", 0) + 1
    return 0


def _probe_eval(args):
    assert 1 <= args.batch_size <= limits.MAX_BATCH_SIZE and 1 <= args.max_gen_toks <= limits.MAX_NEW_TOKENS
    assert args.mix_weight is None or 0 <= args.mix_weight <= 1
    assert args.temperature is None or (math.isfinite(args.temperature) and args.temperature > 0)
    PROBED["eval"] = PROBED.get("eval", 0) + 1
    return 0


def _probe_autotune(spec, target, budget=300.0, out=None, **_):
    assert target in spec.targets and math.isfinite(budget) and 0 < budget <= limits.MAX_BUDGET_S
    PROBED["autotune"] = PROBED.get("autotune", 0) + 1


def _probe_demo(out, plan, prompt):
    assert all(v >= 1 for v in (plan.ar_steps, plan.tidar_steps, plan.batch_size, plan.seq_len))
    PROBED["demo"] = PROBED.get("demo", 0) + 1
    return {"verdict": "PASS"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setattr("zdiff.train.train", _probe_train)
        mp.setattr("zdiff.generation.cli_run.run_generate", _probe_generate)
        mp.setattr("zdiff.serve.cli_run.run_serve", _probe_serve)
        mp.setattr("zdiff.chat.run_chat", _probe_chat)
        mp.setattr("zdiff.eval.cli_run.run_eval", _probe_eval)
        mp.setattr("zdiff.autotune.tune.autotune", _probe_autotune)
        mp.setattr("zdiff.autotune.tune.check_environment", lambda: None)
        mp.setattr("zdiff.demo.run_demo", _probe_demo)
        yield World(root)


@st.composite
def argvs(draw, command: str, world: World):
    sub = SUBPARSERS[command]
    argv = [command]
    for action in sub._actions:
        if not action.option_strings:
            argv.append(draw(st.sampled_from(world.positionals[action.dest])))
    options = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    # train's --mode / --steps / --out are required unless --config or --resume gives them (zdiff.train.run_config)
    required = [a for a in options if a.required or (command == "train" and a.dest in TRAIN_REQUIRED)]
    chosen = [a for a in required if draw(st.integers(0, 15)) > 0]
    chosen += draw(st.lists(st.sampled_from([a for a in options if a not in required]), max_size=5, unique_by=id))
    for action in chosen:
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:
            argv.append(flag)
        elif action.choices:  # mostly valid; the only target the CPU suite can compile for is cpu
            valid = [*action.choices, *(["cpu"] * 4 if "cpu" in action.choices else [])]
            choice = st.one_of(st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(["tpu", ""]))
            argv += [flag, draw(choice)]
        elif action.dest == "prompt":
            for _ in range(draw(st.integers(1, 3))):
                argv += [flag, draw(st.one_of(st.text(max_size=30), st.just("z" * (limits.MAX_PROMPT_CHARS + 1))))]
        elif action.dest in world.flag_values:
            argv += [flag, draw(st.sampled_from(world.flag_values[action.dest]))]
        else:
            argv += [flag, draw(NUMBERS)]
    argv += draw(st.sampled_from([[], [], [], ["--no-such-flag"], ["stray"], ["--steps"]]))
    return argv


def _check_world(world: World, argv: list[str], code: int) -> None:
    assert world.snapshot_inputs() == world.inputs, f"{argv}: an input changed"
    marker = world.existing / "marker.txt"
    if not marker.exists():  # only an explicit --force may replace an existing output
        assert code == 0 and "--force" in argv and argv[0] in ("import", "compile", "export"), f"{argv}: lost data"
    for directory in [world.root, world.root / "out", *world.root.glob("out/*")]:
        assert leftovers(directory) == [], f"{argv}: left {leftovers(directory)} in {directory}"
    for out in world.root.glob("out/*"):
        if out.is_dir() and argv[0] in ("import", "compile", "export"):  # whole or nothing
            complete = out / ("config.json" if argv[0] == "export" else "spec.yaml")
            assert complete.is_file(), f"{argv}: partial output {sorted(os.listdir(out))}"


EXAMPLES = {"check": 60, "cost": 40, "compile": 25, "import": 15, "train": 80, "generate": 80, "autotune": 40,
            "demo": 30, "serve": 30, "tokenize": 30, "export": 15, "eval": 30, "chat": 30}


# known-good command lines of the commands that random flags almost never get right (compile needs a spec the CPU
# can compile, --target cpu, and no flag that fails on its own)
VALID = {"compile": ["compile", "zaya1-tiny", "--target", "cpu", "--out", "out/compiled"]}


@pytest.mark.parametrize("command", sorted(SUBPARSERS))
def test_random_command_lines_end_cleanly(command, world):
    assert command in EXAMPLES, f"new subcommand {command}: give it a fuzz budget"

    @_settings(EXAMPLES[command])
    @given(data=st.data())
    def run(data):
        drawn = argvs(command, world)
        if command in VALID:  # a command with many ways to fail still gets its success path tried
            drawn = st.one_of(st.just(VALID[command]), drawn)
        argv = data.draw(drawn)
        world.reset()
        code, _, err = run_main(argv, seconds=120)
        EXITS.setdefault(command, set()).add(code)
        assert_clean_end(code, err, argv)
        _check_world(world, argv, code)

    run()


def test_the_vectors_reach_the_work():
    """Not only argparse is exercised: every command succeeded at least once (probed ones reached their probe)."""
    assert set(PROBED) == {"train", "generate", "autotune", "demo", "serve", "eval", "chat"}, PROBED
    assert all(EXITS.get(command) == {0, 2} for command in SUBPARSERS), EXITS


@pytest.mark.parametrize("argv", [
    ["check", "zaya1-tiny", "--context", "nan"],
    ["train", "zaya1-tiny", "--mode", "ar", "--steps", "1", "--out", "x", "--lr", "inf"],
    ["cost", "zaya1-tiny", "--target", "h200", "--batch", "1e12"],
])
def test_the_real_entry_point_in_a_subprocess(argv, tmp_path):
    result = subprocess.run([sys.executable, "-m", "zdiff", *argv], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 2 and len(visible_lines(result.stderr)) == 1 and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
