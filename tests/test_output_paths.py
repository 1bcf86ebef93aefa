"""Output paths never lose data: whole-or-nothing directories, one writer at a time, no foreign file
deleted, no output on top of an input, clear errors for paths that cannot be written, stale
temporaries of killed runs cleaned, and autotune table sets that readers see whole."""

import json
import os
import subprocess
import sys
import threading

import pytest
from cli_helpers import assert_error, leftovers, run_main

from zdiff.autotune.tables import load_tables, table_body, write_tables
from zdiff.errors import ZdiffError
from zdiff.outputs import atomic_directory, atomic_write_text, output_lock, remove_stale_temporaries

COMPILE = ["compile", "zaya1-tiny", "--target", "cpu"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_compile_output_is_whole_and_mode_follows_umask(tmp_path):
    code, _, err = run_main(COMPILE + ["--out", tmp_path / "out"], seconds=120)
    assert code == 0, err
    assert (tmp_path / "out" / "manifest.json").is_file() and (tmp_path / "out" / "model.py").is_file()
    assert leftovers(tmp_path) == []
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's 0700


@pytest.mark.parametrize("make_out,fragment", [
    (lambda t: t / "file" / "sub", "file is not a directory"),
    (lambda t: t / "file", "output path exists and is not a directory"),
    (lambda t: "/proc/zdiff-hardening/out", "cannot"),
    (lambda t: "/proc/self/zdiff-out", "cannot"),
])
def test_unwritable_output_paths_are_one_line_and_leave_nothing(tmp_path, make_out, fragment):
    (tmp_path / "file").write_text("mine")
    out = make_out(tmp_path)
    code, _, err = run_main(COMPILE + ["--out", out], seconds=60)
    assert_error(code, err, fragment)
    assert (tmp_path / "file").read_text() == "mine" and leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_parent_is_one_line(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        code, _, err = run_main(COMPILE + ["--out", parent / "out"], seconds=60)
        assert_error(code, err, "Permission denied")
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


@pytest.mark.parametrize("out", [".", ".."])
def test_out_dot_is_refused(tmp_path, monkeypatch, out):
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("mine")
    monkeypatch.chdir(work)
    code, _, err = run_main(COMPILE + ["--out", out, "--force"], seconds=60)
    assert_error(code, err, "is the current directory or one of its parents")
    assert (work / "precious.txt").read_text() == "mine"


def test_import_onto_or_inside_its_input_is_refused(tmp_path):
    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text("{}")
    for out in (src, src / "sub"):
        code, _, err = run_main(["import", src, out, "--force"], seconds=60)
        assert_error(code, err, f"the input {src}")
    code, _, err = run_main(["import", src, tmp_path, "--force"], seconds=60)
    assert_error(code, err, "contains the input")
    assert json.loads((src / "config.json").read_text()) == {}
    assert sorted(p.name for p in src.iterdir()) == ["config.json"]


def test_a_second_writer_gets_a_clear_error(tmp_path):
    out = tmp_path / "out"
    with output_lock(out):
        code, _, err = run_main(COMPILE + ["--out", out], seconds=60)
        assert_error(code, err, f"{out} is being written by another zdiff run (pid {os.getpid()}")
    assert not out.exists() and leftovers(tmp_path) == []


def test_lock_is_held_across_processes(tmp_path):
    """A second process (flock is per open file, so this also holds in-process) is refused while the first holds it."""
    script = ("import sys, time; from zdiff.outputs import output_lock\n"
              "with output_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(30)\n")
    env = dict(os.environ, PYTHONPATH=str(__import__("conftest").REPO))
    holder = subprocess.Popen([sys.executable, "-c", script, tmp_path / "out"], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ZdiffError, match=rf"being written by another zdiff run \(pid {holder.pid}"):
            with atomic_directory(tmp_path / "out"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with atomic_directory(tmp_path / "out") as tmp:  # the holder died: its lock died with it
        (tmp / "f").write_text("x")
    assert (tmp_path / "out" / "f").read_text() == "x"


def test_a_file_written_into_out_during_compile_survives(tmp_path, monkeypatch):
    import zdiff.codegen.compile as compile_module

    out = tmp_path / "out"
    out.mkdir()
    real = compile_module.render_model

    def render_and_intrude(*args, **kwargs):
        (out / "notes.txt").write_text("written by the user meanwhile")
        return real(*args, **kwargs)

    monkeypatch.setattr(compile_module, "render_model", render_and_intrude)
    code, _, err = run_main(COMPILE + ["--out", out], seconds=120)
    assert_error(code, err, "gained files while this run was writing it; nothing was replaced")
    assert (out / "notes.txt").read_text() == "written by the user meanwhile"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and leftovers(tmp_path) == []


def test_force_replaces_only_what_was_there_at_the_start(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(ZdiffError, match="gained new.txt while this run was writing it"):
        with atomic_directory(out, force=True) as tmp:
            (tmp / "result").write_text("new run")
            (out / "new.txt").write_text("someone else's")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt", "old.txt"] and leftovers(tmp_path) == []
    (out / "new.txt").unlink()
    with atomic_directory(out, force=True) as tmp:
        (tmp / "result").write_text("new run")
    assert sorted(p.name for p in out.iterdir()) == ["result"] and leftovers(tmp_path) == []


def test_overlapping_runs_without_force_never_replace_each_other(tmp_path):
    """The second run finds the first one's output complete and refuses; the first output stays."""
    out = tmp_path / "out"
    with atomic_directory(out) as first:
        (first / "who").write_text("first")
    with pytest.raises(ZdiffError, match="output directory is not empty"):
        with atomic_directory(out) as second:
            (second / "who").write_text("second")
    assert (out / "who").read_text() == "first" and leftovers(tmp_path) == []


def test_a_failed_run_leaves_the_old_output(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(out, force=True) as tmp:
            (tmp / "v").write_text("2")
            raise RuntimeError("killed half way")
    assert (out / "v").read_text() == "1" and leftovers(tmp_path) == []


def test_stale_temporaries_of_dead_runs_are_cleaned_live_ones_kept(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    stale = [tmp_path / f".out.tmp-{dead}-abc123", tmp_path / f".out.old-{dead}-9f9f9f9f"]
    live = tmp_path / f".out.tmp-{alive}-def456"
    other = tmp_path / f".other.tmp-{dead}-abc123"
    for d in (*stale, live, other):
        d.mkdir()
        (d / "partial").write_text("x")
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "f").write_text("done")
    assert not any(d.exists() for d in stale)
    assert live.exists() and other.exists()  # a running writer's, and another output's
    assert remove_stale_temporaries(tmp_path / "other") == [other]


def test_atomic_write_text_cleans_stale_file_temporaries(tmp_path):
    stale = tmp_path / f".latest.tmp-{_dead_pid()}-k2j4h5g6"
    stale.write_text("half")
    atomic_write_text(tmp_path / "latest", "step_0000100\n")
    assert (tmp_path / "latest").read_text() == "step_0000100\n" and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def _set(i: int, modules: int = 5) -> dict:
    return {f"mod{m}": table_body("mi300x", {f"mod{m}_fwd": {16: {"BLOCK": i}}}, "static", extra={"set": i})
            for m in range(modules)}


def test_readers_never_see_a_mixed_or_partial_table_set(tmp_path):
    write_tables("mi300x", _set(0), root=tmp_path)
    done = threading.Event()
    failures = []

    def writer():
        try:
            for i in range(1, 40):
                write_tables("mi300x", _set(i), root=tmp_path)
        except Exception as exc:  # noqa: BLE001 (reported below)
            failures.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not done.is_set() or reads < 5:
        tables = load_tables("mi300x", root=tmp_path)
        blocks = {rows[f"{name}_fwd"][16]["BLOCK"] for name, rows in tables.items()}
        assert len(tables) == 5 and len(blocks) == 1, f"mixed or partial set: {tables}"
        reads += 1
    thread.join()
    assert not failures and leftovers(tmp_path) == [] and leftovers(tmp_path / "mi300x") == []
    assert {rows[f"{n}_fwd"][16]["BLOCK"] for n, rows in load_tables("mi300x", root=tmp_path).items()} == {39}


def test_a_table_set_write_that_dies_leaves_the_old_set(tmp_path, monkeypatch):
    write_tables("mi300x", _set(1), root=tmp_path)
    calls = {"n": 0}
    real_dumps = json.dumps

    def dumps_then_die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the run is interrupted after two of five files
        return real_dumps(*args, **kwargs)

    monkeypatch.setattr("zdiff.autotune.tables.json.dumps", dumps_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_tables("mi300x", _set(2), root=tmp_path)
    monkeypatch.undo()
    tables = load_tables("mi300x", root=tmp_path)
    assert {rows[f"{n}_fwd"][16]["BLOCK"] for n, rows in tables.items()} == {1} and len(tables) == 5
    assert leftovers(tmp_path) == []


def test_autotune_refuses_a_second_run_on_the_same_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the lock is taken before anything is compiled
    with output_lock(tmp_path / "mi300x"):
        code, _, err = run_main(["autotune", "zaya1-tiny", "--target", "mi300x", "--budget", "1", "--out", tmp_path],
                                60)
    assert_error(code, err, "is being written by another zdiff run")


def test_sigkill_while_compile_writes_then_rerun(tmp_path):
    """Killed while its temporary exists, compile leaves no output; the next run succeeds and removes the
    temporary and the lock file the dead run left behind."""
    import time

    from conftest import REPO

    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    victim = subprocess.Popen([sys.executable, "-m", "zdiff", *COMPILE, "--out", str(out)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    give_up = time.monotonic() + 120
    while not any(".out.tmp-" in p.name for p in tmp_path.iterdir()) and victim.poll() is None:
        assert time.monotonic() < give_up
        time.sleep(0.005)
    victim.kill()
    victim.wait()
    left = leftovers(tmp_path)
    if out.exists():  # it finished between the poll and the kill: then it is complete and left nothing
        assert (out / "manifest.json").is_file() and left == []
        return
    assert any(f".out.tmp-{victim.pid}-" in name for name in left), left
    code, _, err = run_main(COMPILE + ["--out", out], seconds=120)
    assert code == 0, err
    assert (out / "manifest.json").is_file() and leftovers(tmp_path) == []
