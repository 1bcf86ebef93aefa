"""Reading and writing (possibly sharded) safetensors directories, HF layout.

A directory holds either `model.safetensors` or `model.safetensors.index.json` naming the
shard of every tensor. zdiff writes the same layout that it reads from transformers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError

SINGLE_FILE = "model.safetensors"
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
INDEX_FILE = "model.safetensors.index.json"


def _weight_map(index: Path) -> dict[str, str]:
    """`weight_map` of an index file: tensor name -> shard file name (a plain name in the same directory)."""
    try:
        weight_map = json.loads(index.read_bytes())["weight_map"]
    except (ValueError, KeyError, TypeError) as exc:  # bad JSON or UTF-8, no key, not an object
        raise CheckpointError(f"{index}: not a safetensors index ({exc.__class__.__name__}: {exc})") from None
    except OSError as exc:
        raise CheckpointError(f"{index}: cannot be read ({exc.strerror})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in weight_map.items()):
        raise CheckpointError(f"{index}: weight_map must map tensor names to shard file names, got a "
                              f"{type(weight_map).__name__}")
    bad = sorted({f for f in weight_map.values() if Path(f).name != f or f in ("", ".", "..")})
    if bad:
        raise CheckpointError(f"{index}: shard names must be file names in the same directory, got {bad[0]!r}")
    return weight_map


class TensorSource:
    """Lazy access to the tensors of a checkpoint directory; shard files are checked up front.

    Anything unreadable (a truncated, empty or foreign file) is a CheckpointError naming the file."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._handles: dict[str, object] = {}
        index = self.directory / INDEX_FILE
        if index.is_file():
            weight_map = _weight_map(index)
            missing = sorted({f for f in weight_map.values() if not (self.directory / f).is_file()})
            if missing:
                raise CheckpointError(f"{self.directory}: missing shard file(s) named in {INDEX_FILE}: "
                                      f"{', '.join(missing)}")
            self.file_of = dict(weight_map)
            for file in sorted(set(weight_map.values())):
                listed = set(self._open(file).keys())
                absent = sorted(name for name, f in weight_map.items() if f == file and name not in listed)
                if absent:
                    raise CheckpointError(f"{self.directory / file}: lacks tensor(s) {', '.join(absent[:4])} that "
                                          f"{INDEX_FILE} places there")
        elif (self.directory / SINGLE_FILE).is_file():
            self.file_of = {name: SINGLE_FILE for name in self._open(SINGLE_FILE).keys()}
        else:
            raise CheckpointError(f"{self.directory}: no {SINGLE_FILE} or {INDEX_FILE}")

    def _open(self, file: str):
        if file not in self._handles:
            path = self.directory / file
            try:
                self._handles[file] = safe_open(path, "pt")
            except Exception as exc:  # SafetensorError (header, truncation), OSError: one line naming the file
                reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
                raise CheckpointError(f"{path}: not a readable safetensors file ({reason})") from None
        return self._handles[file]

    def names(self) -> list[str]:
        return sorted(self.file_of)

    def __contains__(self, name: str) -> bool:
        return name in self.file_of

    def _handle(self, name: str):
        return self._open(self.file_of[name])

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype | None:
        """The stored dtype of a tensor, from the header (None for one torch has no name for)."""
        return _DTYPES.get(self._handle(name).get_slice(name).get_dtype())

    def get(self, name: str) -> torch.Tensor:
        handle = self._handle(name)
        try:
            return handle.get_tensor(name)
        except Exception as exc:  # data past the end of a truncated file, an unknown dtype, ...
            reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            path = self.directory / self.file_of[name]
            raise CheckpointError(f"{path}: tensor {name} cannot be read ({reason})") from None

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a tensor, read without loading the rest (a shard of a sharded model)."""
        return self._handle(name).get_slice(name)[start:stop]


def plan_shards(sizes: Iterable[tuple[str, int]], shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped into shards of at most `shard_bytes` (a larger tensor gets a shard of its own),
    in the order given: HF's rule, so the files and the index can be named before any tensor is read."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, nbytes in sizes:
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def shard_file_names(count: int) -> list[str]:
    return [SINGLE_FILE] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def write_shards(directory: str | Path, shards: list[list[str]], get_tensor, metadata: dict[str, str] | None = None,
                 progress=None) -> None:
    """Write planned shards, reading each tensor (`get_tensor(name)`) only while its shard is written, so
    memory holds one shard; more than one shard gets an index with the total size (HF's layout)."""
    directory = Path(directory)
    files = shard_file_names(len(shards))
    weight_map, total = {}, 0
    for file, names in zip(files, shards):
        tensors = {name: get_tensor(name).detach().contiguous().cpu() for name in names}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, str(directory / file), metadata=metadata)
        weight_map.update({name: file for name in names})
        if progress is not None:
            progress.update(len(names))
    if len(files) > 1:
        index = {"metadata": {**(metadata or {}), "total_size": total}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=1))


def write_tensors(directory: str | Path, tensors: Iterable[tuple[str, torch.Tensor]], shard_bytes: int = 4 << 30,
                  metadata: dict[str, str] | None = None) -> None:
    """Write tensors into `directory` as one file, or as shards plus an index past `shard_bytes`."""
    state = dict(tensors)
    shards = plan_shards(((n, t.numel() * t.element_size()) for n, t in state.items()), shard_bytes)
    write_shards(directory, shards, state.__getitem__, metadata)
