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


class TensorSource:
    """Lazy access to the tensors of a checkpoint directory; shard files are checked up front."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index = self.directory / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(f"{index}: not a safetensors index ({exc})") from None
            missing = sorted({f for f in weight_map.values() if not (self.directory / f).is_file()})
            if missing:
                raise CheckpointError(f"{self.directory}: missing shard file(s) named in {INDEX_FILE}: {', '.join(missing)}")
            self.file_of = dict(weight_map)
        elif (self.directory / SINGLE_FILE).is_file():
            with safe_open(self.directory / SINGLE_FILE, "pt") as f:
                self.file_of = {name: SINGLE_FILE for name in f.keys()}
        else:
            raise CheckpointError(f"{self.directory}: no {SINGLE_FILE} or {INDEX_FILE}")
        self._handles: dict[str, object] = {}

    def names(self) -> list[str]:
        return sorted(self.file_of)

    def __contains__(self, name: str) -> bool:
        return name in self.file_of

    def _handle(self, name: str):
        file = self.file_of[name]
        if file not in self._handles:
            self._handles[file] = safe_open(self.directory / file, "pt")
        return self._handles[file]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        return self._handle(name).get_tensor(name)

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
