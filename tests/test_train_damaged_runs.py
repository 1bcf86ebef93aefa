"""`zdiff train --resume` on a damaged run directory: one line and exit 2 (or, for a half-written last
metrics line, the repair: the resumed run logs that step again), never a traceback; `--fsdp` outside
torchrun is refused."""

import shutil

import pytest

from conftest import run_cli
from training_helpers import micro_corpus, micro_spec
from zdiff.cli import main

FAST = ["--mode", "ar", "--steps", "2", "--checkpoint-every", "1", "--batch-size", "2", "--seq-len", "16",
        "--eval-windows", "2"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    spec, corpus = micro_spec(root), micro_corpus(root, files=3)
    done = run_cli("train", spec, "--data", corpus, "--out", root / "run", *FAST)
    assert done.returncode == 0, done.stderr
    shutil.copytree(root / "run", root / "pristine")
    return spec, corpus, root / "run"


def _resume(finished_run, damage, capsys):
    """Damage a fresh copy of the finished run, in its own place (--out must not change), and resume it."""
    spec, corpus, run = finished_run
    shutil.rmtree(run)
    shutil.copytree(run.parent / "pristine", run)
    damage(run)
    capsys.readouterr()
    status = main(["train", str(spec), "--data", str(corpus), "--out", str(run), *FAST, "--resume"])
    return status, capsys.readouterr().err


def _latest(run):
    return run / "checkpoints" / (run / "latest").read_text().strip()


DAMAGES = {
    "metrics line mid-file": (lambda r: (r / "metrics.jsonl").write_text('{"step": 1}\n{"ste\n{"step": 2}\n'),
                              "metrics.jsonl:2: not a JSON record"),
    "metrics record without step": (lambda r: (r / "metrics.jsonl").write_text('[1, 2]\n{"step": 2}\n'),
                                    "metrics.jsonl:1: a record needs an integer 'step'"),
    "run.json missing": (lambda r: (r / "run.json").unlink(), "run.json is missing"),
    "run.json garbage": (lambda r: (r / "run.json").write_bytes(b"\xff\x00{"), "is not a zdiff run record"),
    "run.json config a list": (lambda r: (r / "run.json").write_text('{"config": [1]}'), "'config' must be an object"),
    "latest garbage": (lambda r: (r / "latest").write_bytes(b"\xfe../../etc\n"), "names no checkpoint"),
    "latest dangling": (lambda r: (r / "latest").write_text("step_0000099\n"), "no checkpoint in"),
    "trainer.pt empty": (lambda r: (_latest(r) / "trainer.pt").write_bytes(b""), "not a readable trainer state"),
    "trainer.pt missing": (lambda r: (_latest(r) / "trainer.pt").unlink(), "not a readable trainer state"),
    "weights truncated": (lambda r: (_latest(r) / "model.safetensors").write_bytes(b"\x08\x00\x00"), "safetensors"),
}


@pytest.mark.parametrize("case", list(DAMAGES))
def test_a_damaged_run_directory_is_one_line(finished_run, capsys, case):
    damage, fragment = DAMAGES[case]
    status, err = _resume(finished_run, damage, capsys)
    assert status == 2 and fragment in err and err.count("\n") == 1, err


def test_a_half_written_last_metrics_line_is_dropped_on_resume(finished_run, capsys):
    def half_written(run):
        with open(run / "metrics.jsonl", "a") as metrics:
            metrics.write('{"step": 3, "lo')

    status, err = _resume(finished_run, half_written, capsys)
    assert status == 0, err
    assert '{"step": 3' not in (finished_run[2] / "metrics.jsonl").read_text()


def test_fsdp_outside_torchrun_is_refused(finished_run, tmp_path, capsys, monkeypatch):
    spec, corpus, _ = finished_run
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    status = main(["train", str(spec), "--data", str(corpus), "--out", str(tmp_path / "x"), *FAST, "--fsdp"])
    err = capsys.readouterr().err
    assert status == 2 and "--fsdp shards the model over the ranks of a torchrun launch" in err, err


@pytest.mark.parametrize("spelling", ["moved", "trailing slash", "relative"])
def test_resume_identifies_the_run_directory_by_content(finished_run, tmp_path, capsys, monkeypatch, spelling):
    spec, corpus, run = finished_run
    moved = tmp_path / "elsewhere"
    shutil.copytree(run.parent / "pristine", moved)
    monkeypatch.chdir(tmp_path)
    out = {"moved": str(moved), "trailing slash": f"{moved}/", "relative": "elsewhere"}[spelling]
    data = f"{corpus}/" if spelling == "relative" else str(corpus)  # --data spelled another way, too
    status = main(["train", str(spec), "--data", data, "--out", out, *FAST, "--resume"])
    err = capsys.readouterr().err
    assert status == 0, err
