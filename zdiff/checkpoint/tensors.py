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


def write_tensors(directory: str | Path, tensors: Iterable[tuple[str, torch.Tensor]], shard_bytes: int = 4 << 30,
                  metadata: dict[str, str] | None = None) -> None:
    """Write tensors into `directory` as one file, or as shards plus an index past `shard_bytes`."""
    directory = Path(directory)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.detach().contiguous().cpu()
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(directory / SINGLE_FILE), metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / file), metadata=metadata)
        weight_map.update({name: file for name in shard})
    (directory / INDEX_FILE).write_text(json.dumps({"metadata": metadata or {}, "weight_map": weight_map}, indent=1))
