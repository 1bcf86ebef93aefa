"""The byte-level tokenizer of the tiny specs: ids 0..255 are bytes, then a few specials."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ByteTokenizer:
    bos_id: int = 256
    eos_id: int = 257
    mask_id: int = 258
    vocab_size: int = 264  # 256 bytes + 8 specials (259..263 reserved)

    def encode(self, text: str, bos: bool = True) -> list[int]:
        return ([self.bos_id] if bos else []) + list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
