"""The tokenizer training uses, and the (training, held-out) token streams of `--data`.

`--data` names tokenized shards (`zdiff tokenize`; zdiff.train.shards), a weighted mixture of
them (zdiff.train.mixture), or raw inputs (text, JSONL, Parquet, Arrow; `stdlib`, the embedded
default, is the running Python's own standard library source), which are tokenized once into a
cache of shards. Either way training reads memory-mapped shards, and a batch is a pure function
of (seed, step): resuming at step s reads exactly the batches an uninterrupted run would have
read, with no sampler state to save.
"""

from __future__ import annotations

from ..checkpoint.tokenizer import Tokenizer, checkpoint_tokenizer  # re-exported: the names training used first
from .documents import STDLIB, discover, stdlib_files

__all__ = ["STDLIB", "Tokenizer", "checkpoint_tokenizer", "discover", "split_corpus", "stdlib_files"]


def split_corpus(data: str, tokenizer: Tokenizer, log=None):
    """(training, held-out) of `--data` as one Mixture and the sources' held-out tokens (zdiff.train.mixture)."""
    from .mixture import open_mixture

    return open_mixture(data, tokenizer, log=log)
