"""Training data: text files -> one token stream per split, sampled deterministically by step.

The embedded default corpus (`--data stdlib`) is the running Python's own standard library
source, so demos and tests need no download. Files are split into training and held-out
sets by a hash of their relative path, which is stable across runs and machines with the
same Python. A batch is a pure function of (seed, step): resuming at step s reads exactly
the batches an uninterrupted run would have read, with no sampler state to save.
"""

from __future__ import annotations

import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, ZdiffError
from ..tokenize import ByteTokenizer

STDLIB = "stdlib"
_SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
HELDOUT_EVERY = 20  # one file in 20 is held out


def stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(f for f in root.rglob("*.py") if not _SKIP_DIRS & set(f.relative_to(root).parts))
    return root, files


def discover(data: str) -> tuple[Path, list[Path]]:
    """The corpus root and its text files (sorted), for a file, a directory or `stdlib`."""
    if data == STDLIB:
        return stdlib_files()
    path = Path(data)
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith(".") and _is_text(f))
        if not files:
            raise ZdiffError(f"--data {data}: the directory holds no text files")
        return path, files
    raise ZdiffError(f"--data {data}: no such file or directory (or use --data stdlib)")


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


def is_heldout(root: Path, file: Path) -> bool:
    return zlib.crc32(str(file.relative_to(root)).encode()) % HELDOUT_EVERY == 0


class Tokenizer:
    """Byte-level for the tiny specs, or a checkpoint's tokenizer.json (via `tokenizers`)."""

    def __init__(self, tokenizer_json: Path | None, vocab_size: int):
        self.tokenizer_json = tokenizer_json
        if tokenizer_json is None:
            self.byte = ByteTokenizer()
            if vocab_size < self.byte.mask_id + 1:
                raise ZdiffError(f"model.vocab_size is {vocab_size}; byte-level training needs at least "
                                 f"{self.byte.mask_id + 1} (256 bytes + bos/eos/mask) or a checkpoint with "
                                 "tokenizer.json")
            self.separator = self.byte.eos_id
        else:
            from tokenizers import Tokenizer as HFTokenizer

            self.hf = HFTokenizer.from_file(str(tokenizer_json))
            self.separator = None

    @property
    def name(self) -> str:
        return "bytes" if self.tokenizer_json is None else str(self.tokenizer_json)

    def encode(self, text: str) -> np.ndarray:
        if self.tokenizer_json is None:
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)
        return np.asarray(self.hf.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids) -> str:
        if self.tokenizer_json is None:
            return self.byte.decode(ids)
        return self.hf.decode(list(ids))


def checkpoint_tokenizer(directory: Path, vocab_size: int) -> Tokenizer:
    """A checkpoint's tokenizer: its tokenizer.json, else the byte-level tokenizer that zdiff's own byte-level
    runs use. A checkpoint imported from Hugging Face without tokenizer files is refused rather than read with
    bytes: its vocabulary is a learned tokenizer's, and byte ids would be silently wrong text."""
    tokenizer_json = Path(directory) / "tokenizer.json"
    if tokenizer_json.is_file():
        return Tokenizer(tokenizer_json, vocab_size)
    if (Path(directory) / "import.json").is_file():
        raise CheckpointError(f"{directory}: imported from Hugging Face without tokenizer.json, so its text cannot "
                              "be encoded; copy the model's tokenizer.json into it (or re-import from a directory "
                              "that has one)")
    return Tokenizer(None, vocab_size)


@dataclass
class TokenStream:
    tokens: torch.Tensor  # (N,) int64
    num_bytes: int  # UTF-8 bytes of the text behind it (for bits per byte)
    num_files: int

    @property
    def tokens_per_byte(self) -> float:
        return len(self.tokens) / max(self.num_bytes, 1)

    def batch(self, seed: int, step: int, batch_size: int, window: int) -> torch.Tensor:
        """(batch_size, window) token windows at offsets drawn from (seed, step) alone."""
        if len(self.tokens) <= window:
            raise ZdiffError(f"the data has {len(self.tokens)} tokens, fewer than one window of {window} "
                             "(--seq-len + 1); give more text or a shorter --seq-len")
        rng = np.random.default_rng([seed, step])
        offsets = torch.from_numpy(rng.integers(0, len(self.tokens) - window, size=batch_size))
        return self.tokens[offsets[:, None] + torch.arange(window)]

    def windows(self, window: int, count: int) -> torch.Tensor:
        """`count` evenly spaced windows (a fixed evaluation set)."""
        starts = torch.linspace(0, len(self.tokens) - window - 1, count).long()
        return self.tokens[starts[:, None] + torch.arange(window)]


def heldout_files(root: Path, files: list[Path]) -> set[Path]:
    """One file in HELDOUT_EVERY by path hash; at least one and never all (small corpora)."""
    held = {f for f in files if is_heldout(root, f)}
    if not held or len(held) == len(files):
        held = {min(files, key=lambda f: zlib.crc32(str(f.relative_to(root)).encode()))}
    return held


def load_corpus(data: str, tokenizer: Tokenizer, heldout: bool | None) -> TokenStream:
    """Files of one split (heldout True/False; None: all of them)."""
    root, files = discover(data)
    if heldout is not None:
        held = heldout_files(root, files)
        files = [f for f in files if (f in held) == heldout]
    pieces, num_bytes = [], 0
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        if not text:
            continue
        pieces.append(tokenizer.encode(text))
        if tokenizer.separator is not None:
            pieces.append(np.array([tokenizer.separator], dtype=np.int32))
        num_bytes += len(text.encode("utf-8"))
    if not pieces or num_bytes == 0:
        which = {True: "held-out ", False: "training ", None: ""}[heldout]
        raise ZdiffError(f"--data {data}: no {which}text found (all files empty?)")
    return TokenStream(torch.from_numpy(np.concatenate(pieces)).long(), num_bytes, len(files))


def split_corpus(data: str, tokenizer: Tokenizer) -> tuple[TokenStream, TokenStream]:
    """(training, held-out). A single file is split 95 / 5 by position instead."""
    root, files = discover(data)
    if len(files) == 1:
        stream = load_corpus(data, tokenizer, None)
        cut = int(len(stream.tokens) * (1 - 1 / HELDOUT_EVERY))
        ratio = stream.num_bytes / len(stream.tokens)
        return (TokenStream(stream.tokens[:cut], int(cut * ratio), 1),
                TokenStream(stream.tokens[cut:], stream.num_bytes - int(cut * ratio), 1))
    return load_corpus(data, tokenizer, False), load_corpus(data, tokenizer, True)
