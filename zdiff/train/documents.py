"""Corpus inputs -> documents: text files, JSONL (plain, .gz, .zst), Parquet, and Arrow files (a `datasets`
directory saved with `save_to_disk`).

A corpus is cut into *units* (one structured file, or a run of consecutive text files up to UNIT_BYTES)
that depend only on the sorted file list, never on the number of workers, so `zdiff tokenize` writes the
same shards for any --workers and a killed run can skip the units it finished.
"""

from __future__ import annotations

import gzip
import io
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ZdiffError

STDLIB = "stdlib"
_SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst")
PARQUET_SUFFIXES = (".parquet",)
ARROW_SUFFIXES = (".arrow",)
DATASETS_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
UNIT_BYTES = 64 << 20  # text files are grouped into units of about this much input
UNIT_FILES = 4096


@dataclass(frozen=True)
class Unit:
    """One piece of tokenization work: files (relative to the corpus root) of one kind."""

    kind: str  # text, jsonl, parquet or arrow
    files: tuple[str, ...]


def stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(f for f in root.rglob("*.py") if not _SKIP_DIRS & set(f.relative_to(root).parts))
    return root, files


def file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(ARROW_SUFFIXES):
        return "arrow"
    return "text"


def discover(data: str) -> tuple[Path, list[Path]]:
    """The corpus root and its input files (sorted), for a file, a directory or `stdlib`."""
    if data == STDLIB:
        return stdlib_files()
    path = Path(data)
    if path.is_file():
        return path.parent, [path]
    if not path.is_dir():
        raise ZdiffError(f"--data {data}: no such file or directory (or use --data stdlib)")
    files = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
    if any((f.parent / marker).is_file() for f in files if f.suffix == ".arrow" for marker in DATASETS_MARKERS):
        files = [f for f in files if f.suffix == ".arrow"]  # a `datasets` save_to_disk directory: its tables only
    files = [f for f in files if file_kind(f) != "text" or _is_text(f)]
    if not files:
        raise ZdiffError(f"--data {data}: the directory holds no text, JSONL, Parquet or Arrow files")
    return path, files


def _is_text(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(8192)
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > len(head) - 4  # a multi-byte character cut by the 8 KiB read
    return True


def plan_units(root: Path, files: list[Path]) -> list[Unit]:
    """Structured files one unit each; consecutive text files grouped up to UNIT_BYTES / UNIT_FILES."""
    units, run, run_bytes = [], [], 0
    for f in files:
        kind = file_kind(f)
        rel = str(f.relative_to(root))
        if kind != "text":
            if run:
                units.append(Unit("text", tuple(run)))
                run, run_bytes = [], 0
            units.append(Unit(kind, (rel,)))
            continue
        run.append(rel)
        run_bytes += f.stat().st_size
        if run_bytes >= UNIT_BYTES or len(run) >= UNIT_FILES:
            units.append(Unit("text", tuple(run)))
            run, run_bytes = [], 0
    if run:
        units.append(Unit("text", tuple(run)))
    return units


def unit_documents(root: Path, unit: Unit, field: str) -> Iterator[str]:
    """The documents of a unit, in order."""
    for rel in unit.files:
        path = root / rel
        if unit.kind == "text":
            text = path.read_text(encoding="utf-8", errors="replace")
            if text:
                yield text
        elif unit.kind == "jsonl":
            yield from _jsonl_documents(path, field)
        else:
            yield from _arrow_documents(path, field, unit.kind)


def _open_compressed(path: Path) -> io.TextIOBase:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise ZdiffError(f"{path}: reading .zst needs the zstandard package (pip install 'zdiff[data]')") from None
        stream = zstandard.ZstdDecompressor().stream_reader(path.open("rb"))
        return io.TextIOWrapper(stream, encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    try:
        with _open_compressed(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise ZdiffError(f"{path}:{number}: not a JSON line ({exc})") from None
                if not isinstance(record, dict) or field not in record:
                    raise ZdiffError(f"{path}:{number}: the record has no field {field!r} (choose one with --field)")
                text = record[field]
                if not isinstance(text, str):
                    raise ZdiffError(f"{path}:{number}: field {field!r} is a {type(text).__name__}, not a string")
                if text:
                    yield text
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ZdiffError(f"{path}: cannot be read ({exc})") from None
    except Exception as exc:  # zstandard.ZstdError and similar decoder failures
        if isinstance(exc, ZdiffError):
            raise
        raise ZdiffError(f"{path}: cannot be decompressed ({exc})") from None


def _arrow_documents(path: Path, field: str, kind: str) -> Iterator[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ZdiffError(f"{path}: reading {kind} files needs pyarrow (pip install 'zdiff[data]')") from None
    try:
        if kind == "parquet":
            parquet = pq.ParquetFile(path)
            names = parquet.schema_arrow.names
            batches = parquet.iter_batches(columns=[field]) if field in names else None
        else:
            reader = _open_arrow(pa, path)
            names = reader.schema.names
            batches = iter(reader) if field in names else None
        if batches is None:
            raise ZdiffError(f"{path}: has no column {field!r} (columns: {', '.join(names)}; choose one with --field)")
        for batch in batches:
            column = batch.column(field)
            if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
                raise ZdiffError(f"{path}: column {field!r} holds {column.type}, not strings")
            yield from (text for text in column.to_pylist() if text)
    except (OSError, pa.ArrowException) as exc:
        raise ZdiffError(f"{path}: cannot be read as {kind} ({exc})") from None


def _open_arrow(pa, path: Path):
    """`datasets` writes Arrow IPC streams; plain Arrow files (the random-access format) are read too."""
    try:
        return pa.ipc.open_stream(path)
    except pa.ArrowInvalid:
        table = pa.ipc.open_file(path).read_all()
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
