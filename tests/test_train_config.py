"""`zdiff train` settings: --config files (run.json replays), CLI overrides, --resume with only --out, extending a
finished run bit-exactly, --init with a run directory and no SPEC."""

import json

import pytest
import torch
from cli_helpers import assert_error, run_main
from safetensors.torch import load_file

from training_helpers import micro_corpus, micro_spec
from zdiff.checkpoint.store import resolve_checkpoint
from zdiff.cli import build_parser
from zdiff.errors import CheckpointError, ZdiffError
from zdiff.train.run_config import resolve

FAST = ["--batch-size", "4", "--seq-len", "24", "--warmup", "1", "--eval-windows", "2", "--lr", "3e-3"]


def _resolve(argv, log=print):
    args = build_parser().parse_args(["train", *map(str, argv)])
    actions = {a.dest: a for a in args.train_parser._actions}
    given = {k: v for k, v in vars(args).items() if k in actions}
    return resolve(given, actions, resume=given.get("resume", False), config=given.get("config"), log=log)


def test_a_config_file_gives_every_flag_and_the_command_line_overrides_it(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("spec: zaya1-tiny\nmode: tidar\nsteps: 7\nout: runs/x\nbatch-size: 8\nlr: 2.0e-4\n"
                      "fsdp: true\ndata: a:0.7,b:0.3\n")
    cfg = _resolve(["--config", config, "--lr", "1e-3", "--seq-len", "64"])
    assert (cfg.spec, cfg.mode, cfg.steps, cfg.out, cfg.batch_size, cfg.fsdp) == ("zaya1-tiny", "tidar", 7, "runs/x",
                                                                                   8, True)
    assert cfg.lr == 1e-3 and cfg.seq_len == 64 and cfg.data == "a:0.7,b:0.3"


@pytest.mark.parametrize("text,reason", [
    ("lr: -1\n", "lr must be positive, got -1"),
    ("mode: sideways\n", "mode must be one of ar, tidar, got 'sideways'"),
    ("fsdp: 3\n", "fsdp must be true or false, got 3"),
    ("learning_rate: 1\n", "unknown setting 'learning_rate'"),
    ("steps: [1, 2]\n", "steps must be a single value"),
    ("- a\n- b\n", "must map setting names to values, got a list"),
    ("a: [\n", "not valid YAML or JSON"),
])
def test_bad_config_values_are_refused_like_bad_flags(tmp_path, text, reason):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ZdiffError, match=rf"--config {config}: .*{reason}".replace("[", r"\[")):
        _resolve(["--config", config, "--mode", "ar", "--steps", "1", "--out", tmp_path / "o"])


def test_required_settings_are_named():
    with pytest.raises(ZdiffError, match="--mode is required"):
        _resolve(["zaya1-tiny", "--steps", "1", "--out", "o"])
    with pytest.raises(ZdiffError, match="SPEC is required unless --init"):
        _resolve(["--mode", "ar", "--steps", "1", "--out", "o"])
    with pytest.raises(ZdiffError, match="--resume needs --out"):
        _resolve(["--resume"])


def test_resolve_checkpoint_of_a_run_directory(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_0000004").mkdir(parents=True)
    (run / "checkpoints" / "step_0000004" / "spec.yaml").write_text("x")
    (run / "latest").write_text("step_0000004\n")
    path, note = resolve_checkpoint(run)
    assert path == run / "checkpoints" / "step_0000004" and "latest checkpoint step_0000004" in note
    (run / "final").mkdir()
    (run / "final" / "spec.yaml").write_text("x")
    assert resolve_checkpoint(run) == (run / "final", f"{run} is a run directory: using its final/")
    assert resolve_checkpoint(run / "final") == (run / "final", None)
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        resolve_checkpoint(run / "checkpoints")


def _losses(run):
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in r]


def test_resume_with_only_out_extends_a_finished_run_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("ZDIFF_CACHE", str(tmp_path / "cache"))
    spec, corpus = micro_spec(tmp_path), micro_corpus(tmp_path, files=3)
    base = ["train", spec, "--data", corpus, "--mode", "ar", "--checkpoint-every", "2", *FAST]
    code, _, err = run_main([*base, "--steps", "6", "--decay-steps", "3", "--out", tmp_path / "whole"], 300)
    assert code == 0, err
    code, _, err = run_main([*base, "--steps", "3", "--out", tmp_path / "grown"], 300)
    assert code == 0, err
    code, out, err = run_main(["train", "--resume", "--out", tmp_path / "grown", "--steps", "6"], 300)
    assert code == 0, err
    assert "extending" in out and "from 3 to 6 steps" in out and "steps 4..6 run at its final learning rate" in out
    assert _losses(tmp_path / "grown") == _losses(tmp_path / "whole")
    wa = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    wb = load_file(tmp_path / "grown" / "final" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    saved = json.loads((tmp_path / "grown" / "run.json").read_text())["config"]
    assert (saved["steps"], saved["decay_steps"]) == (6, 3)
    code, _, err = run_main(["train", "--resume", "--out", tmp_path / "grown", "--steps", "4"], 60)
    assert_error(code, err, "--steps 4 is fewer than the run's 6")

    # the run directory as --init (its final/), no SPEC; its run.json as a config for a new run
    code, out, err = run_main(["train", "--mode", "tidar", "--init", tmp_path / "grown", "--steps", "1",
                               "--data", corpus, "--out", tmp_path / "conv", *FAST], 300)
    assert code == 0, err
    assert "is a run directory: using its final/" in out
    code, _, err = run_main(["train", "--config", tmp_path / "grown" / "run.json", "--out", tmp_path / "replay",
                             "--steps", "2", "--decay-steps", "2"], 300)
    assert code == 0, err
    replay = json.loads((tmp_path / "replay" / "run.json").read_text())["config"]
    assert {**replay, "out": None, "steps": None, "decay_steps": None} == {**saved, "out": None, "steps": None,
                                                                           "decay_steps": None}
