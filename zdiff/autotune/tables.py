"""Tuned launch configs on disk: one JSON file per (device, generated kernel module), vLLM style.

    zdiff/autotune/tables/<device>/<module_name>.json
    {"device": "mi300x", "triton_version": "3.9.0", "date": "2026-11-27", "method": "static" | "measured",
     "spec": ..., "spec_hash": ..., "kernels": {entry point: {bucket: config}}}

Buckets are JSON strings on disk and ints in memory. A generated module keeps `CONFIGS`
(its defaults) and `TABLES` (filled here); at launch it calls
`pick_config(TABLES, entry, bucket, CONFIGS[entry])`, which takes the nearest bucket and
falls back to the default when the entry has no table.
"""

from __future__ import annotations

import datetime
import json
import warnings
from pathlib import Path

import triton

from ..errors import ZdiffError

TABLES_DIR = Path(__file__).parent / "tables"
METHODS = ("static", "measured")


def table_path(device: str, module_name: str, root: str | Path | None = None) -> Path:
    return Path(root or TABLES_DIR) / device / f"{module_name}.json"


def write_table(device: str, module_name: str, kernels: dict, method: str, root: str | Path | None = None,
                extra: dict | None = None, date: str | None = None) -> Path:
    """Write one module's table; `kernels` is {entry: {bucket: config}}."""
    assert method in METHODS, method
    path = table_path(device, module_name, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"device": device, "triton_version": triton.__version__,
            "date": date or datetime.date.today().isoformat(), "method": method, **(extra or {}),
            "kernels": {entry: {str(b): rows[b] for b in sorted(rows, key=int)} for entry, rows in kernels.items()}}
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    return path


def read_table(path: str | Path) -> dict:
    """One table file, checked, with int buckets."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
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
    return {**data, "kernels": parsed}


def load_tables(device: str, root: str | Path | None = None) -> dict[str, dict[str, dict[int, dict]]]:
    """{module_name: {entry: {bucket: config}}} of every table of a device (empty when none)."""
    folder = Path(root or TABLES_DIR) / device
    tables = {}
    for path in sorted(folder.glob("*.json")):
        table = read_table(path)
        if table.get("triton_version", "").split(".")[:2] != triton.__version__.split(".")[:2]:
            warnings.warn(f"{path} was tuned with Triton {table.get('triton_version')}, running {triton.__version__}",
                          stacklevel=2)
        tables[path.stem] = table["kernels"]
    return tables


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
