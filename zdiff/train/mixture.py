"""`--data`: one source or a weighted mixture (`code/manifest.json:0.7,web:0.3`), sampled deterministically.

A source is a shard set (`zdiff tokenize` output: its directory or manifest.json), or raw inputs (a text
file or directory, JSONL, Parquet, Arrow, or `stdlib`), which are tokenized once into the cache
($ZDIFF_CACHE/data, keyed by the files' names, sizes and times and the tokenizer) and read from there.

A batch is a pure function of (seed, step): each row's source is drawn with the weights, then its window
offset uniformly within that source, from one generator seeded by (seed, step). Every rank draws the same
offsets (a few integers) and reads only its own rows, so data parallel equals one process and a resumed run
reads what an uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ZdiffError
from ..outputs import output_lock
from .documents import STDLIB, discover
from .shards import MANIFEST, TokenRanges, check_tokenizer, manifest_path, open_split, read_manifest


@dataclass(frozen=True)
class SourceSpec:
    name: str
    weight: float


def parse_data(data: str) -> list[SourceSpec]:
    """`A`, or `A:w1,B:w2,...` (weights relative; they need not sum to 1)."""
    items = [item.strip() for item in data.split(",")]
    if len(items) == 1 and (":" not in data or Path(data).exists()):
        return [SourceSpec(data, 1.0)]
    sources = []
    for item in items:
        name, sep, weight_text = item.rpartition(":")
        if not sep or not name:
            raise ZdiffError(f"--data {data}: {item!r} has no weight; write each source of a mixture as PATH:WEIGHT")
        try:
            weight = float(weight_text)
        except ValueError:
            raise ZdiffError(f"--data {data}: the weight {weight_text!r} of {name} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ZdiffError(f"--data {data}: the weight of {name} must be a finite number >= 0, got {weight_text}")
        sources.append(SourceSpec(name, weight))
    if sum(s.weight for s in sources) <= 0:
        raise ZdiffError(f"--data {data}: the weights sum to zero; give at least one source a positive weight")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ZdiffError(f"--data {data}: a source is named twice")
    return sources


def data_inputs(data: str) -> list[str]:
    """The paths `--data` reads (for the output-overlap check); nothing for stdlib or a malformed mixture (the
    loader reports that)."""
    try:
        return [s.name for s in parse_data(data) if s.name != STDLIB]
    except ZdiffError:
        return []


@dataclass
class Mixture:
    names: list[str]
    weights: np.ndarray  # normalised
    sources: list[TokenRanges]

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.sources)

    def __len__(self) -> int:
        return self.num_tokens

    def check_window(self, window: int) -> None:
        for name, weight, source in zip(self.names, self.weights, self.sources):
            if weight > 0:
                source.check_window(window, f"--data {name} (training split)")

    def plan(self, seed: int, step: int, batch_size: int, window: int) -> tuple[np.ndarray, np.ndarray]:
        """(source of each row, window offset of each row) of the global batch of `step`."""
        rng = np.random.default_rng([seed, step])
        if len(self.sources) == 1:
            which = np.zeros(batch_size, dtype=np.int64)
        else:
            which = rng.choice(len(self.sources), size=batch_size, p=self.weights)
        highs = np.array([max(s.num_tokens - window, 1) for s in self.sources], dtype=np.int64)
        return which, rng.integers(0, highs[which])

    def batch(self, seed: int, step: int, batch_size: int, window: int, rows: slice = slice(None)) -> torch.Tensor:
        """Rows `rows` of the global batch of `step`: (len(rows), window) int64 tokens."""
        which, offsets = self.plan(seed, step, batch_size, window)
        which, offsets = which[rows], offsets[rows]
        out = torch.empty((len(which), window), dtype=torch.int64)
        for i, source in enumerate(self.sources):
            mine = np.flatnonzero(which == i)
            if len(mine):
                out[torch.from_numpy(mine)] = source.gather(offsets[mine], window)
        return out

    def summary(self) -> list[dict]:
        return [{"source": name, "weight": float(w), "tokens": s.num_tokens, "documents": s.num_documents}
                for name, w, s in zip(self.names, self.weights, self.sources)]

    def describe(self) -> str:
        if len(self.sources) == 1:
            return f"{self.names[0]}, {self.sources[0].num_documents:,} documents"
        return ", ".join(f"{name} {w:.0%}" for name, w in zip(self.names, self.weights))

    def rows_per_source(self, seed: int, step: int, batch_size: int, window: int) -> dict[str, int]:
        which, _ = self.plan(seed, step, batch_size, window)
        counts = np.bincount(which, minlength=len(self.sources))
        return {name: int(c) for name, c in zip(self.names, counts)}


def open_mixture(data: str, tokenizer, log=None) -> tuple[Mixture, TokenRanges]:
    """(training mixture, held-out tokens of every source together) for `--data`."""
    specs = parse_data(data)
    trains, helds = [], []
    for spec in specs:
        path = manifest_path(spec.name) or _cached_shards(spec.name, tokenizer, log)
        manifest = read_manifest(path)
        check_tokenizer(path, manifest, tokenizer)
        if manifest["train"]["tokens"] == 0:
            raise ZdiffError(f"--data {spec.name}: no text found (all documents empty?)")
        trains.append(open_split(path, manifest, "train"))
        helds.append(open_split(path, manifest, "heldout"))
    weights = np.array([s.weight for s in specs], dtype=np.float64)
    return Mixture([s.name for s in specs], weights / weights.sum(), trains), TokenRanges.join(helds)


def _cached_shards(data: str, tokenizer, log) -> Path:
    """Raw inputs tokenized once into the cache (one writer; other ranks and runs wait and reuse)."""
    from ..codegen.generated import cache_root
    from .tokenize_corpus import tokenize_corpus

    root, files = discover(data)
    key = hashlib.sha256(json.dumps([str(Path(os.path.abspath(root))), tokenizer.hash] + [
        [str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]).encode()).hexdigest()
    label = "stdlib" if data == STDLIB else Path(data).name or "data"
    out = cache_root() / "data" / f"{label}-{key[:16]}"
    if not (out / MANIFEST).is_file():
        with output_lock(out, wait=True):
            if not (out / MANIFEST).is_file():
                tokenize_corpus(data, out, tokenizer, workers=1, log=log or (lambda _: None), lock=False)
    return out / MANIFEST
