"""Shared by the tests of the CLI's error paths (test_cli_errors.py, test_cli_fuzz.py, ...): run `zdiff.cli.main`
in-process with a deadline, and judge how a run ended (exit 0, or exit 2 with exactly one line; never a traceback
or a leftover)."""

from __future__ import annotations

import contextlib
import io
import signal
from pathlib import Path

TRANSIENT_MARKERS = (".tmp-", ".old-", ".lock")


class Hang(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise Hang in the main thread after `seconds` (a hang fails the test instead of blocking CI)."""
    def expire(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_main(argv, seconds: float = 60.0) -> tuple[int, str, str]:
    """zdiff.cli.main(argv) in this process: (exit status, stdout, stderr). Any exception but SystemExit
    propagates (that is a traceback a user would see)."""
    from zdiff.cli import main

    out, err = io.StringIO(), io.StringIO()
    with deadline(seconds), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # --help / --version
            code = exc.code if isinstance(exc.code, int) else 0
    return code, out.getvalue(), err.getvalue()


def assert_clean_end(code: int, err: str, argv=()) -> None:
    """Exit 0, or exit 2 with one `zdiff: error:` line and no traceback."""
    assert code in (0, 2), f"{argv}: exit {code}: {err[-2000:]}"
    assert "Traceback" not in err, f"{argv}: {err[-2000:]}"
    if code == 2:
        lines = visible_lines(err)
        assert len(lines) == 1 and lines[0].startswith("zdiff: error: "), f"{argv}: {err[-2000:]}"


def visible_lines(text: str) -> list[str]:
    """What a terminal shows: progress bars redraw with carriage returns (and clear themselves)."""
    shown = (line.rsplit("\r", 1)[-1].strip() for line in text.split("\n"))
    return [line for line in shown if line]


def assert_error(code: int, err: str, fragment: str) -> None:
    assert code == 2, f"expected exit 2, got {code}: {err}"
    assert_clean_end(code, err)
    assert fragment in err, f"{fragment!r} not in {err!r}"


def leftovers(directory: Path) -> list[str]:
    """Temporaries, swapped-out copies and lock files a run left next to its output."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if any(m in p.name for m in TRANSIENT_MARKERS))
