"""Tuned launch configs on disk: one JSON file per (device, generated kernel module), vLLM style.

    <tables root>/<device>/<module_name>.json

Roots, first with a folder for the device wins (a device's folder is one set, never mixed with another):
`$ZDIFF_TABLES` (what `--tables DIR` sets), the user's tables (`$ZDIFF_CACHE/tables`, where `zdiff
autotune` writes by default), then the tables shipped in the package (zdiff/autotune/tables).

    {"device": "mi300x", "triton_version": "3.9.0", "date": "2026-11-27", "method": "static" | "measured",
     "spec": ..., "spec_hash": ..., "kernels": {entry point: {bucket: config}}}

A device folder is one *set*: `write_tables` rebuilds it beside the old one (the tables it does
not rewrite are copied) and swaps it in whole (zdiff.outputs), and `load_tables` reads every file
through one handle on the folder and retries if the folder was swapped meanwhile, so a reader
never sees a mix of two sets or half of one, even while an autotune run is killed mid-write.

Buckets are JSON strings on disk and ints in memory. A generated module keeps `CONFIGS`
(its defaults) and `TABLES` (filled here); at launch it calls
`pick_config(TABLES, entry, bucket, CONFIGS[entry])`, which takes the nearest bucket and
falls back to the default when the entry has no table.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import warnings
from pathlib import Path

import triton

from ..codegen.launch import LAUNCH_OPTIONS
from ..errors import ZdiffError
from ..outputs import atomic_directory
from ..user_dirs import user_tables_root

SHIPPED_TABLES = Path(__file__).parent / "tables"
TABLES_DIR = SHIPPED_TABLES  # where the package's own tables live (writers name their root explicitly)
TABLES_ENV = "ZDIFF_TABLES"
METHODS = ("static", "measured")


def table_roots() -> list[Path]:
    """The roots searched for a device's tables, in order: $ZDIFF_TABLES, the user's, the shipped ones."""
    explicit = os.environ.get(TABLES_ENV)
    if explicit is not None:
        if not explicit or not Path(explicit).is_dir():
            raise ZdiffError(f"--tables / ${TABLES_ENV}: {explicit!r} is not a directory of autotune tables "
                             "(zdiff autotune --out DIR writes one)")
    return ([Path(explicit)] if explicit else []) + [user_tables_root(), SHIPPED_TABLES]


def tables_root(device: str) -> Path:
    """The root whose <device>/ folder this process reads (the shipped root when no one has the device)."""
    roots = table_roots()
    return next((root for root in roots if (root / device).is_dir()), SHIPPED_TABLES)


def table_path(device: str, module_name: str, root: str | Path | None = None) -> Path:
    return Path(root or tables_root(device)) / device / f"{module_name}.json"


def table_body(device: str, kernels: dict, method: str, extra: dict | None = None, date: str | None = None) -> dict:
    """One module's table as written to disk; `kernels` is {entry: {bucket: config}}."""
    assert method in METHODS, method
    return {"device": device, "triton_version": triton.__version__,
            "date": date or datetime.date.today().isoformat(), "method": method, **(extra or {}),
            "kernels": {entry: {str(b): rows[b] for b in sorted(rows, key=int)} for entry, rows in kernels.items()}}


def write_tables(device: str, bodies: dict[str, dict], root: str | Path | None = None, lock: bool = True) -> list[Path]:
    """Write several modules' tables ({module: table_body(...)}) as one set, swapped in whole.

    `lock=False` when the caller holds zdiff.outputs.output_lock on the device folder (autotune does,
    for its whole run)."""
    folder = Path(root or user_tables_root()) / device
    with atomic_directory(folder, force=True, lock=lock) as tmp:
        if folder.is_dir():
            for kept in folder.glob("*.json"):
                if kept.stem not in bodies and _still_valid(kept):
                    shutil.copy2(kept, tmp / kept.name)
        for module_name, body in bodies.items():
            (tmp / f"{module_name}.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    return [table_path(device, name, root) for name in bodies]


def _still_valid(path: Path) -> bool:
    """A table of the old set that a new set may keep; a damaged one is left out (its kernels use their
    defaults until re-tuned) with a warning, rather than carried into the new set."""
    try:
        read_table(path)
    except ZdiffError as err:
        warnings.warn(f"{err}; left out of the new set")
        return False
    return True


def write_table(device: str, module_name: str, kernels: dict, method: str, root: str | Path | None = None,
                extra: dict | None = None, date: str | None = None) -> Path:
    """Write (or replace) one module's table in the device's set."""
    return write_tables(device, {module_name: table_body(device, kernels, method, extra, date)}, root)[0]


def read_table(path: str | Path) -> dict:
    """One table file, checked, with int buckets."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ZdiffError(f"autotune table {path} is not readable JSON ({err.__class__.__name__})") from None
    return parse_table(text, path)


def parse_table(text: str, path: Path) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ZdiffError(f"autotune table {path} is not readable JSON ({err.__class__.__name__})") from None
    kernels = data.get("kernels") if isinstance(data, dict) else None
    if not isinstance(kernels, dict) or data.get("method") not in METHODS:
        raise ZdiffError(f"autotune table {path} needs a 'kernels' object and a method in {METHODS}")
    parsed = {}
    for entry, rows in kernels.items():
        try:
            parsed[entry] = {int(bucket): dict(config) for bucket, config in rows.items()}
        except (AttributeError, TypeError, ValueError):
            raise ZdiffError(f"autotune table {path}: kernels[{entry!r}] must map integer buckets to configs") from None
        for bucket, config in parsed[entry].items():
            _check_config(config, f"autotune table {path}: kernels[{entry!r}][{bucket}]")
    return {**data, "kernels": parsed}


def _check_config(config: dict, where: str) -> None:
    """Upper-case constexprs (tile sizes, flags) and known launch options, each an integer >= 0 (waves_per_eu 0
    is the compiler's choice): what a kernel launch takes."""
    for key, value in config.items():
        if not (isinstance(key, str) and (key.isupper() or key in LAUNCH_OPTIONS)):
            raise ZdiffError(f"{where}: unknown launch option {key!r} (known: {', '.join(LAUNCH_OPTIONS)}, and "
                             "upper-case tile sizes); re-tune, or delete the table")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1 << 20:
            raise ZdiffError(f"{where}: {key} must be an integer in [0, {1 << 20}], got {value!r}; "
                             "re-tune, or delete the table")


def load_tables(device: str, root: str | Path | None = None) -> dict[str, dict[str, dict[int, dict]]]:
    """{module_name: {entry: {bucket: config}}} of every table of a device (empty when none)."""
    folder = Path(root or tables_root(device)) / device
    tables = {}
    for path, text in _read_set(folder).items():
        table = parse_table(text, path)
        if str(table.get("triton_version", "")).split(".")[:2] != triton.__version__.split(".")[:2]:
            warnings.warn(f"{path} was tuned with Triton {table.get('triton_version')}, running {triton.__version__}",
                          stacklevel=2)
        tables[path.stem] = table["kernels"]
    return tables


def _read_set(folder: Path, attempts: int = 20) -> dict[Path, str]:
    """The text of every table in `folder`, all from one version of the folder.

    Files are read relative to one open handle on the folder; if the path names another folder
    afterwards (a writer swapped a new set in), the read is repeated. Writers never change a
    folder in place, so an unchanged folder means one complete set."""
    for _ in range(attempts):
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise ZdiffError(f"autotune tables {folder} cannot be read ({err.strerror})") from None
        try:
            texts = {}
            for name in sorted(os.listdir(fd)):
                if name.endswith(".json") and not name.startswith("."):
                    file_fd = os.open(name, os.O_RDONLY, dir_fd=fd)
                    with os.fdopen(file_fd, "rb") as f:
                        texts[folder / name] = f.read().decode("utf-8", errors="replace")
            if os.stat(folder).st_ino == os.fstat(fd).st_ino:
                return texts
        except FileNotFoundError:
            pass  # the folder was swapped out and is being removed: read the new one
        except OSError as err:
            raise ZdiffError(f"autotune tables {folder} cannot be read ({err.strerror})") from None
        finally:
            os.close(fd)
    raise ZdiffError(f"autotune tables {folder} kept changing while being read ({attempts} tries)")


def apply_tables(modules: dict, device: str, root: str | Path | None = None) -> list[str]:
    """Fill each generated module's TABLES from the device's tables; returns the entries filled.

    Entries the module does not have (a table from another spec version) are ignored; so are
    modules without tables (their kernels keep CONFIGS)."""
    tables = load_tables(device, root)
    filled = []
    for name, module in modules.items():
        for entry, rows in tables.get(name, {}).items():
            if entry in module.CONFIGS:
                module.TABLES[entry] = dict(rows)
                filled.append(entry)
    return filled
