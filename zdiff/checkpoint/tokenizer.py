"""The tokenizer of a checkpoint: byte-level for the tiny specs, or its tokenizer.json (via `tokenizers`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, ZdiffError
from ..tokenize import ByteTokenizer


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

    @property
    def hash(self) -> str:
        """What shards are checked against: equal hashes, equal token ids for every text."""
        if self.tokenizer_json is None:
            return "bytes"
        return "sha256:" + hashlib.sha256(Path(self.tokenizer_json).read_bytes()).hexdigest()

    @property
    def vocab_size(self) -> int:
        if self.tokenizer_json is None:
            return self.byte.vocab_size
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if self.tokenizer_json is None:
            return [np.frombuffer(t.encode("utf-8", errors="replace"), dtype=np.uint8).astype(np.int32)
                    for t in texts]
        return [np.asarray(e.ids, dtype=np.int32) for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        if self.tokenizer_json is None:
            return self.byte.decode(ids)
        return self.hf.decode(list(ids))


def _byte_level_import(provenance: Path) -> bool:
    """import.json of a re-imported zdiff export of a byte-level model says so (`"tokenizer": "bytes"`)."""
    try:
        return json.loads(provenance.read_text()).get("tokenizer") == "bytes"
    except (OSError, ValueError, AttributeError):
        return False


def checkpoint_tokenizer(directory: Path, vocab_size: int) -> Tokenizer:
    """A checkpoint's tokenizer: its tokenizer.json, else the byte-level tokenizer that zdiff's own byte-level
    runs use. A checkpoint imported from Hugging Face without tokenizer files is refused rather than read with
    bytes: its vocabulary is a learned tokenizer's, and byte ids would be silently wrong text."""
    tokenizer_json = Path(directory) / "tokenizer.json"
    if tokenizer_json.is_file():
        return Tokenizer(tokenizer_json, vocab_size)
    provenance = Path(directory) / "import.json"
    if provenance.is_file() and not _byte_level_import(provenance):
        raise CheckpointError(f"{directory}: imported from Hugging Face without tokenizer.json, so its text cannot "
                              "be encoded; copy the model's tokenizer.json into it (or re-import from a directory "
                              "that has one)")
    return Tokenizer(None, vocab_size)
