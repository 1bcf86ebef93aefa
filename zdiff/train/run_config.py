"""`zdiff train` settings from three places: defaults < `--config FILE` < command-line flags.

A config file is YAML or JSON mapping flag names (`batch_size` or `batch-size`) to values; the `run.json`
a run writes is one too (its "config" mapping), so a run can be replayed with `--config RUN/run.json`.
Every value goes through the flag's own parser, so a config file is checked exactly like the command line.

`--resume` needs only `--out`: the run's saved settings are used. A setting given again (flag or config)
must equal the saved one, except `--steps`, which may grow: the run continues past its planned end at the
schedule's final learning rate (`decay_steps` keeps the cosine's length).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import yaml

from ..errors import ZdiffError
from .trainer import TrainConfig

CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
REQUIRED = ("mode", "steps", "out")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def load_config_file(path: str) -> dict:
    """The settings of a YAML / JSON config file (or a run's run.json), keys as TrainConfig fields."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ZdiffError(f"--config {path}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ZdiffError(f"--config {path}: not valid YAML or JSON ({str(exc).splitlines()[0]})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "spec_hash" in data:
        data = data["config"]  # a run.json
    if not isinstance(data, dict):
        raise ZdiffError(f"--config {path}: must map setting names to values, got a {type(data).__name__}")
    settings = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in CONFIG_FIELDS:
            raise ZdiffError(f"--config {path}: unknown setting {key!r} (the settings are the flags of zdiff train)")
        settings[name] = value
    return settings


def check_setting(actions: dict[str, argparse.Action], name: str, value, where: str):
    """`value` parsed by the flag's own type and choices (None stays None: the default)."""
    action = actions.get(name)
    if value is None or action is None:
        return value
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ZdiffError(f"{where}: {name} must be true or false, got {value!r}")
        return value
    if isinstance(value, (dict, list, bool)):
        raise ZdiffError(f"{where}: {name} must be a single value, got {value!r}")
    parsed = str(value)
    if action.type is not None:
        try:
            parsed = action.type(parsed)
        except argparse.ArgumentTypeError as exc:
            raise ZdiffError(f"{where}: {name} {exc}") from None
    if action.choices is not None and parsed not in action.choices:
        raise ZdiffError(f"{where}: {name} must be one of {', '.join(map(str, action.choices))}, got {parsed!r}")
    return parsed


def resolve(given: dict, actions: dict[str, argparse.Action], resume: bool, config: str | None,
            log=print) -> TrainConfig:
    """The run's TrainConfig from the flags given on the command line, a config file and (resume) run.json."""
    from_file = {k: check_setting(actions, k, v, f"--config {config}")
                 for k, v in (load_config_file(config) if config else {}).items()}
    explicit = {**from_file, **{k: v for k, v in given.items() if k in CONFIG_FIELDS}}
    if resume:
        return _resumed(explicit, log)
    for name in REQUIRED:
        if explicit.get(name) is None:
            raise ZdiffError(f"{_flag(name)} is required (on the command line or in --config)")
    if explicit.get("spec") is None and explicit.get("init") is None:
        raise ZdiffError("SPEC is required unless --init names a checkpoint (whose spec is then used)")
    return TrainConfig(**{k: v for k, v in explicit.items() if v is not None})


def saved_config(out: str) -> dict:
    """The config of the run in `out` (its run.json), or one line saying why it cannot be read."""
    path = Path(out) / "run.json"
    try:
        config = json.loads(path.read_text())["config"]
    except FileNotFoundError:
        raise ZdiffError(f"--resume: {path} is missing: {out} holds no run (start it without --resume)") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise ZdiffError(f"--resume: {path} is not a zdiff run record ({type(err).__name__}); the run directory is "
                         "damaged (start a new run)") from None
    if not isinstance(config, dict):
        raise ZdiffError(f"--resume: {path}: 'config' must be an object; the run directory is damaged")
    return config


def _resumed(explicit: dict, log) -> TrainConfig:
    if explicit.get("out") is None:
        raise ZdiffError("--resume needs --out (the run directory to continue)")
    saved = saved_config(explicit["out"])
    unknown = sorted(set(saved) - set(CONFIG_FIELDS))
    if unknown:
        raise ZdiffError(f"--resume: {explicit['out']}/run.json has settings this zdiff does not know: {unknown}")
    merged = {**saved, **{k: v for k, v in explicit.items() if k != "steps"}}
    check_resume(saved, merged)
    steps = explicit.get("steps", saved["steps"])
    if steps < saved["steps"]:
        raise ZdiffError(f"--resume: --steps {steps} is fewer than the run's {saved['steps']}; a resumed run can "
                         "only be extended")
    if steps > saved["steps"]:
        decay = saved.get("decay_steps") or saved["steps"]
        merged["decay_steps"] = decay
        log(f"[train] extending {explicit['out']} from {saved['steps']} to {steps} steps: the learning-rate schedule "
            f"is kept as planned (cosine to step {decay}), so steps {max(decay, saved['steps']) + 1}..{steps} run at "
            f"its final learning rate ({saved.get('lr', 1e-3) * saved.get('min_lr_ratio', 0.1):.3g})")
    merged["steps"] = steps
    return TrainConfig(**merged)


def _same_setting(saved, now) -> bool:
    """Equal settings; two spellings of one existing file or directory (relative, trailing /) count as equal."""
    if saved == now:
        return True
    if isinstance(saved, str) and isinstance(now, str) and os.path.exists(saved) and os.path.exists(now):
        return os.path.samefile(saved, now)
    return False


def check_resume(saved: dict, cfg: dict) -> None:
    """A resumed run has the saved settings; only steps (and the decay length an extension fixes) may differ."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for key in CONFIG_FIELDS:
        # the run is the directory holding run.json, however it is spelled or wherever it was moved
        if key in ("steps", "decay_steps", "out"):
            continue
        before = saved.get(key, defaults[key])
        if not _same_setting(before, cfg.get(key, defaults[key])):
            raise ZdiffError(f"--resume: {_flag(key)} was {before!r} in the run, now {cfg.get(key)!r}; a resumed run "
                             f"keeps its settings (leave {_flag(key)} out, or start a new --out)")
