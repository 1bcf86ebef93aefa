"""The rules every zdiff output directory follows (import, compile, train, autotune).

- **Whole or nothing.** A run writes into a temporary sibling `.NAME.tmp-PID-XXXX` and renames
  it into place when it is complete; a failure removes it. Replacing an existing directory
  (`--force`) swaps the two in one `renameat2(RENAME_EXCHANGE)` where the kernel has it, so
  the path never disappears; temporaries of killed runs (their PID is gone) are removed by the
  next run that writes the same output.
- **One writer.** A run holds an exclusive `flock` on the sibling `.NAME.lock` for as long as
  it writes NAME; a second run gets a clear error naming the holder's PID, never a silent
  replacement. The lock file is removed on release (inode-checked, so a racing opener retries).
- **Nothing foreign is deleted.** Without `--force` the final rename only succeeds onto an
  absent or empty directory (the kernel checks emptiness atomically); with `--force` only the
  entries that were there when the run started may go: anything that appeared during the run
  stops the replacement.
- **No overlap with inputs.** An output that is, contains or lies inside an input, or that is
  the working directory or one of its parents, is refused before anything is written.
- Outputs get the usual permissions (0777 / 0666 less the umask), not the 0700 / 0600 of a
  temporary.
- Permission, read-only, not-a-directory and similar OS failures are one-line ZdiffErrors.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import functools
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import ZdiffError

_RENAME_EXCHANGE = 2  # linux/fs.h


def _os_error(action: str, path: Path, exc: OSError) -> ZdiffError:
    reason = exc.strerror or exc.__class__.__name__
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
    return ZdiffError(f"cannot {action} {path}: {reason}{where}")


def resolve_output(path: str | Path, inputs: Iterable[str | Path | None] = (), replaces: bool = True) -> Path:
    """The absolute output path, after refusing outputs that would destroy an input or (`replaces`: the
    output directory is replaced as a whole) the working directory."""
    out = Path(os.path.abspath(path))
    if out.parent == out:
        raise ZdiffError(f"output {path} is the file-system root; choose a directory below it")
    cwd = Path(os.getcwd())
    if replaces and (out == cwd or out in cwd.parents):
        raise ZdiffError(f"output {path} is the current directory or one of its parents; a run replaces its output "
                         "directory as a whole, so choose a new directory")
    for given in inputs:
        if given is None:
            continue
        inp = Path(os.path.abspath(given))
        real_out, real_inp = Path(os.path.realpath(out)), Path(os.path.realpath(inp))
        for o, i in ((out, inp), (real_out, real_inp)):
            if o == i or o in i.parents or i in o.parents:
                relation = "is" if o == i else ("contains" if o in i.parents else "is inside")
                raise ZdiffError(f"output {path} {relation} the input {given}; write the output somewhere else")
    return out


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete `.NAME.tmp-PID-*` / `.NAME.old-PID-*` siblings (directories or files) left by runs that were
    killed (PID gone)."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)-[0-9a-z_]+$")
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(out.parent):
            match = pattern.match(entry.name)
            if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _make_parent(out: Path) -> None:
    for ancestor in out.parents:
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                raise ZdiffError(f"cannot write {out}: {ancestor} is not a directory")
            break
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error("create the directory for", out, exc) from None


def check_output(out_dir: str | Path, force: bool = False, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Everything about an output that can be refused before a run starts working (atomic_directory checks
    again when it commits): its place, its inputs, and an existing non-empty directory without `force`."""
    out = resolve_output(out_dir, inputs)
    try:
        if out.exists() and not out.is_dir():
            raise ZdiffError(f"output path exists and is not a directory: {out}")
        present = set(os.listdir(out)) if out.is_dir() else None
    except OSError as exc:
        raise _os_error("read", out, exc) from None
    if present and not force:
        raise ZdiffError(f"output directory is not empty: {out} (pass --force to replace it)")
    return out


@contextlib.contextmanager
def output_lock(out: str | Path, wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on output `out` (a flock on the sibling `.NAME.lock`) for the block.

    Held by another run: a ZdiffError, or with `wait` block until it is released (a shared cache)."""
    out = Path(os.path.abspath(out))
    lock_path = out.with_name(f".{out.name}.lock")
    _make_parent(out)
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _os_error("write", out, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ZdiffError(f"{out} is being written by another zdiff run (pid {holder}, lock {lock_path}); "
                             "wait for it or choose another output") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and flock: take the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield out
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2); False when the kernel or libc cannot."""
    libc = _libc()
    if libc is None or not hasattr(libc, "renameat2"):
        return False
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False  # file system without exchange support
    raise OSError(err, os.strerror(err), str(b))


def _commit(tmp: Path, out: Path, force: bool, present: set[str] | None) -> None:
    """Move the finished `tmp` to `out` (see the module docstring for the rules)."""
    if not force or not out.exists():
        try:
            os.rename(tmp, out)  # onto an absent or empty directory only: the kernel checks
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise ZdiffError(f"{out} gained files while this run was writing it; nothing was replaced "
                                 "(pass --force to replace it)") from None
            raise
        return
    appeared = sorted(set(os.listdir(out)) - (present or set()))
    if appeared:
        raise ZdiffError(f"{out} gained {', '.join(appeared[:3])} while this run was writing it; it was left as it is")
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old contents
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(out_dir: str | Path, force: bool = False, inputs: Iterable[str | Path | None] = (),
                     lock: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it becomes `out_dir`, on any exception it is removed.

    An existing non-empty `out_dir` is an error unless `force`; with `force` it is replaced once the new
    contents are complete. `lock=False` when the caller already holds `output_lock(out_dir)`."""
    out = resolve_output(out_dir, inputs)
    with output_lock(out) if lock else contextlib.nullcontext(out):
        check_output(out, force)
        present = set(os.listdir(out)) if out.is_dir() else None
        remove_stale_temporaries(out)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
            tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would be the output's mode after the rename
        except OSError as exc:
            raise _os_error("write", out, exc) from None
        try:
            yield tmp
            _commit(tmp, out, force, present)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _os_error("write", out, exc) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace a file's contents in one rename (readers see the old or the new text, never a mix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # not mkstemp's 0600
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
