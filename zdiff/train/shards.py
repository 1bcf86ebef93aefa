"""Tokenized shards: the on-disk format `zdiff tokenize` writes and training memory-maps.

A shard set is a directory:
  manifest.json              written last: tokenizer (name, hash), dtype, per split its shards and the
                             documents / tokens / UTF-8 bytes behind them
  shards/NNNNN.SPLIT.bin     the tokens of one unit's documents of SPLIT (train or heldout), back to back
                             (each followed by the tokenizer's separator when it has one), uint16 when the
                             vocabulary fits in 16 bits, else uint32 (Megatron-style .bin)
  shards/NNNNN.SPLIT.idx     uint64 document boundaries: 0, end of document 1, ..., end of the last (.idx)
  shards/NNNNN.json          the unit's counts; its presence marks the unit complete (resume skips it)

Documents go to the held-out split by a hash of their text (one in HELDOUT_EVERY), so identical documents
always land in the same split and the split does not depend on file names, order or worker count. When no
document hashes into one of the splits (tiny corpora), that split is the last 1/HELDOUT_EVERY of the tokens
of the other, as a token range (`start`, `stop`) of its shards.

Reading maps each .bin with np.memmap: a window touches only its own pages, so resident memory does not
grow with the corpus, and a rank reads only the windows it trains on.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ZdiffError

FORMAT = "zdiff-shards"
VERSION = 1
MANIFEST = "manifest.json"
SHARDS_DIR = "shards"
SPLITS = ("train", "heldout")
HELDOUT_EVERY = 20


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def is_heldout_document(text: str) -> bool:
    digest = hashlib.blake2b(text.encode("utf-8", errors="replace"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % HELDOUT_EVERY == 0


def unit_stem(index: int) -> str:
    return f"{SHARDS_DIR}/{index:05d}"


# --- the manifest --------------------------------------------------------------------------


def build_manifest(plan: dict, unit_stats: list[dict]) -> dict:
    """The manifest of finished units (`unit_stats[i]`: split -> documents / tokens / bytes)."""
    itemsize = np.dtype(plan["dtype"]).itemsize
    splits = {split: [] for split in SPLITS}
    for index, stats in enumerate(unit_stats):
        for split in SPLITS:
            s = stats[split]
            if s["tokens"]:
                stem = f"{unit_stem(index)}.{split}"
                splits[split].append({"path": f"{stem}.bin", "index": f"{stem}.idx", "documents": s["documents"],
                                      "tokens": s["tokens"], "bytes": s["bytes"], "file_bytes": s["tokens"] * itemsize,
                                      "start": 0, "stop": s["tokens"]})
    note = _fill_empty_split(splits)
    manifest = {"format": FORMAT, "version": VERSION, "source": plan["source"], "field": plan["field"],
                "tokenizer": plan["tokenizer"], "dtype": plan["dtype"], "heldout_every": HELDOUT_EVERY,
                "units": len(unit_stats)}
    for split in SPLITS:
        shards = splits[split]
        manifest[split] = {"documents": sum(s["documents"] for s in shards),
                           "tokens": sum(s["stop"] - s["start"] for s in shards),
                           "bytes": sum(s["bytes"] for s in shards), "shards": shards}
    if note:
        manifest["note"] = note
    return manifest


def _fill_empty_split(splits: dict) -> str | None:
    """Tiny corpora: when no document hashed into a split, carve it from the tail of the other's tokens."""
    train, held = splits["train"], splits["heldout"]
    if train and held:
        return None
    if not train and not held:
        return None
    if not train:  # everything hashed into held-out: train on it, hold out its tail
        train[:] = held
        held.clear()
    total = sum(s["stop"] - s["start"] for s in train)
    want = max(1, total // HELDOUT_EVERY)
    while want and train:
        last = train[-1]
        length = last["stop"] - last["start"]
        take = min(want, length - 1) if len(train) == 1 else min(want, length)
        if take <= 0:
            break
        cut = last["stop"] - take
        moved_bytes = round(last["bytes"] * take / length)
        held.insert(0, dict(last, start=cut, bytes=moved_bytes, documents=0))
        if take == length:
            train.pop()
        else:
            train[-1] = dict(last, stop=cut, bytes=last["bytes"] - moved_bytes)
        want -= take
    return (f"no document hashed into one of the splits; held-out is the last 1/{HELDOUT_EVERY} of the tokens "
            "(as token ranges of the training shards)")


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ZdiffError(f"{path}: cannot be read ({exc})") from None
    except ValueError as exc:
        raise ZdiffError(f"{path}: not a zdiff shard manifest (invalid JSON: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ZdiffError(f"{path}: not a zdiff shard manifest (no \"format\": \"{FORMAT}\"; write one with "
                         "`zdiff tokenize`)")
    if manifest.get("version") != VERSION:
        raise ZdiffError(f"{path}: shard format version {manifest.get('version')!r}, this zdiff reads {VERSION}")
    for key in ("tokenizer", "dtype", *SPLITS):
        if key not in manifest:
            raise ZdiffError(f"{path}: the manifest has no {key!r}")
    if manifest["dtype"] not in ("uint16", "uint32"):
        raise ZdiffError(f"{path}: dtype must be uint16 or uint32, got {manifest['dtype']!r}")
    return manifest


def manifest_path(data: str) -> Path | None:
    """The manifest `data` names (the file, or a directory holding one); None for raw inputs."""
    path = Path(data)
    if path.is_dir() and (path / MANIFEST).is_file():
        return path / MANIFEST
    if path.is_file() and path.name.endswith(".json"):
        try:
            with path.open("rb") as f:
                head = f.read(4096)
        except OSError:
            return None
        if FORMAT.encode() in head:
            return path
    return None


# --- reading -----------------------------------------------------------------------------


@dataclass
class TokenRanges:
    """Token ranges of memory-mapped shards read as one stream (a split of one or more shard sets)."""

    pieces: list[tuple[np.ndarray, int, int]]  # (memmap, start, stop)
    num_bytes: int
    num_documents: int

    def __post_init__(self):
        lengths = np.array([stop - start for _, start, stop in self.pieces], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    @property
    def num_tokens(self) -> int:
        return int(self.starts[-1])

    def __len__(self) -> int:
        return self.num_tokens

    @property
    def tokens_per_byte(self) -> float:
        return self.num_tokens / max(self.num_bytes, 1)

    def check_window(self, window: int, what: str) -> None:
        if self.num_tokens <= window:
            raise ZdiffError(f"{what} has {self.num_tokens} tokens, fewer than one window of {window} "
                             "(--seq-len + 1); give more text or a shorter --seq-len")

    def gather(self, offsets, window: int) -> torch.Tensor:
        """(len(offsets), window) int64 windows starting at stream positions `offsets`."""
        out = np.empty((len(offsets), window), dtype=np.int64)
        for row, offset in enumerate(int(o) for o in offsets):
            filled = 0
            piece = int(np.searchsorted(self.starts, offset, side="right")) - 1
            while filled < window:
                tokens, start, stop = self.pieces[piece]
                local = start + offset + filled - int(self.starts[piece])
                take = min(window - filled, stop - local)
                out[row, filled:filled + take] = tokens[local:local + take]
                filled += take
                piece += 1
        return torch.from_numpy(out)

    def windows(self, window: int, count: int) -> torch.Tensor:
        """`count` evenly spaced windows (a fixed evaluation set)."""
        self.check_window(window, "the held-out split")
        starts = np.linspace(0, self.num_tokens - window - 1, count).astype(np.int64)
        return self.gather(starts, window)

    @staticmethod
    def join(parts: list["TokenRanges"]) -> "TokenRanges":
        return TokenRanges([p for part in parts for p in part.pieces], sum(p.num_bytes for p in parts),
                           sum(p.num_documents for p in parts))


def open_split(path: Path, manifest: dict, split: str) -> TokenRanges:
    """The memory-mapped shards of one split, each checked against the manifest (present, whole size)."""
    root = path.parent
    dtype = np.dtype(manifest["dtype"])
    pieces, maps = [], {}
    for shard in manifest[split]["shards"]:
        file = root / shard["path"]
        if file not in maps:
            maps[file] = _map_shard(file, shard, dtype, path)
        pieces.append((maps[file], int(shard["start"]), int(shard["stop"])))
    return TokenRanges(pieces, int(manifest[split]["bytes"]), int(manifest[split]["documents"]))


def _map_shard(file: Path, shard: dict, dtype: np.dtype, manifest: Path) -> np.ndarray:
    index = manifest.parent / shard["index"]
    for needed in (file, index):
        if not needed.is_file():
            raise ZdiffError(f"{needed}: shard listed by {manifest} is missing (were the shards moved without "
                             "their manifest? keep the directory together, or run `zdiff tokenize` again)")
    size = os.path.getsize(file)
    if size != shard["file_bytes"]:
        state = "truncated" if size < shard["file_bytes"] else "longer than written"
        raise ZdiffError(f"{file}: {state} shard ({size} bytes, {manifest} says {shard['file_bytes']}); "
                         "run `zdiff tokenize` again")
    index_size = os.path.getsize(index)
    if shard["documents"] and index_size < (shard["documents"] + 1) * 8:
        raise ZdiffError(f"{index}: truncated index ({index_size} bytes for {shard['documents']} documents)")
    return np.memmap(file, dtype=dtype, mode="r", shape=(shard["tokens"],))


def check_tokenizer(path: Path, manifest: dict, tokenizer) -> None:
    """Shards from another tokenizer would train on the wrong ids without any error: refuse them."""
    theirs = manifest["tokenizer"]
    if theirs.get("hash") != tokenizer.hash:
        raise ZdiffError(f"{path}: the shards were tokenized with {theirs.get('name')!r} ({theirs.get('hash')}), "
                         f"this model uses {tokenizer.name!r} ({tokenizer.hash}); tokenize again with "
                         "`zdiff tokenize --tokenizer` the model's checkpoint")
