"""`zdiff tokenize`: corpus inputs -> token shards + manifest (format: zdiff.train.shards).

Units (zdiff.train.documents.plan_units) are tokenized in parallel by worker processes; each unit's files are
written under temporary names and renamed, its counts file last, so a killed run leaves only whole units and
the next run with the same inputs skips them. The manifest is written when every unit is done. A unit's
output depends only on its documents, so the shard set is byte-identical for any number of workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..checkpoint.tokenizer import Tokenizer
from ..errors import ZdiffError
from ..outputs import atomic_write_text, output_lock, remove_stale_temporaries
from ..tokenize import ByteTokenizer
from .documents import Unit, discover, plan_units, unit_documents
from .shards import MANIFEST, SPLITS, build_manifest, is_heldout_document, token_dtype, unit_stem

PLAN = "plan.json"
ENCODE_BATCH = 256  # documents per tokenizer call


def tokenizer_identity(tokenizer: Tokenizer) -> dict:
    return {"name": tokenizer.name, "hash": tokenizer.hash, "vocab_size": tokenizer.vocab_size,
            "separator": tokenizer.separator}


def tokenizer_for(source: str) -> Tokenizer:
    """`bytes`, a tokenizer.json file, or a checkpoint / run directory holding one (its final/ or latest)."""
    if source == "bytes":
        return Tokenizer(None, ByteTokenizer().vocab_size)
    path = Path(source)
    if path.is_dir():
        from ..checkpoint.store import resolve_checkpoint

        path = resolve_checkpoint(path)[0] / "tokenizer.json"
    if not path.is_file():
        raise ZdiffError(f"--tokenizer {source}: no tokenizer.json there (give 'bytes' for a byte-level model, a "
                         "tokenizer.json, or a checkpoint directory that has one)")
    try:
        return Tokenizer(path, 0)
    except Exception as exc:  # tokenizers raises plain Exception for malformed files
        raise ZdiffError(f"--tokenizer {path}: not a readable tokenizer ({str(exc)[:200]})") from None


def make_plan(data: str, tokenizer: Tokenizer, field: str) -> tuple[Path, list[Unit], dict]:
    root, files = discover(data)
    units = plan_units(root, files)
    plan = {"source": data, "field": field, "tokenizer": tokenizer_identity(tokenizer),
            "dtype": token_dtype(tokenizer.vocab_size),
            "units": [{"kind": u.kind, "files": [[f, (root / f).stat().st_size] for f in u.files]} for u in units]}
    return root, units, plan


def tokenize_corpus(data: str, out: str | Path, tokenizer: Tokenizer, workers: int = 1, field: str = "text",
                    log=print, lock: bool = True) -> dict:
    """Tokenize `data` into the shard set `out` (resuming a killed run into the same `out`); the manifest."""
    out = Path(out)
    root, units, plan = make_plan(data, tokenizer, field)
    with output_lock(out) if lock else contextlib.nullcontext():
        if (out / MANIFEST).is_file():
            raise ZdiffError(f"{out} already holds tokenized shards ({out / MANIFEST}); choose another OUT")
        created = _start_or_resume(out, plan)
        done = [i for i in range(len(units)) if (out / f"{unit_stem(i)}.json").is_file()]
        if done:
            log(f"[tokenize] resuming: {len(done)} of {len(units)} units already written")
        try:
            _run_units(root, units, plan, out, [i for i in range(len(units)) if i not in set(done)], workers, field)
        except ZdiffError:
            if created:  # bad input on a fresh run: leave nothing behind
                shutil.rmtree(out, ignore_errors=True)
            raise
        stats = [json.loads((out / f"{unit_stem(i)}.json").read_text()) for i in range(len(units))]
        manifest = build_manifest(plan, stats)
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    t, h = manifest["train"], manifest["heldout"]
    log(f"[tokenize] {t['documents'] + h['documents']:,} documents, {t['tokens']:,} training + {h['tokens']:,} "
        f"held-out tokens ({manifest['dtype']}) -> {out / MANIFEST}")
    return manifest


def write_token_documents(out: str | Path, documents: Iterable, tokenizer: Tokenizer, source: str,
                          log=print) -> dict:
    """Documents that are token ids already (a model's own samples: benchmarks/onpolicy_corpus.py) as a one-unit
    shard set at `out`, usable as --data. All go to the training split (the held-out split is then carved from
    its tail, as for any corpus whose documents all hashed into one split). Built in a temporary directory
    beside `out` and renamed into place, so `out` is whole or absent."""
    out = Path(out)
    if out.exists():
        raise ZdiffError(f"{out} already exists; choose another OUT")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        plan = {"source": source, "field": "token ids", "tokenizer": tokenizer_identity(tokenizer),
                "dtype": token_dtype(tokenizer.vocab_size)}
        stem = tmp / unit_stem(0)
        stem.parent.mkdir(parents=True)
        writers = {split: _SplitWriter(stem.with_name(f"{stem.name}.{split}"), plan["dtype"]) for split in SPLITS}
        try:
            for ids in documents:
                ids = np.asarray(ids, dtype=np.int64)
                if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
                    raise ZdiffError(f"{source}: a document holds token ids outside 0..{tokenizer.vocab_size - 1}")
                text_bytes = len(tokenizer.decode(ids.tolist()).encode("utf-8", "replace"))
                if tokenizer.separator is not None:
                    ids = np.append(ids, tokenizer.separator)
                writers["train"].add(ids, text_bytes)
            stats = {split: writer.commit() for split, writer in writers.items()}
        finally:
            for writer in writers.values():
                writer.discard()
        manifest = build_manifest(plan, [stats])
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"[tokenize] {manifest['train']['documents']:,} documents, {manifest['train']['tokens']:,} training + "
        f"{manifest['heldout']['tokens']:,} held-out tokens -> {out / MANIFEST}")
    return manifest


def _start_or_resume(out: Path, plan: dict) -> bool:
    """Write the plan of a fresh run (True), or check that an unfinished run had the same plan (False)."""
    saved_path = out / PLAN
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text())
        for key in ("source", "field", "tokenizer", "dtype", "units"):
            if saved.get(key) != plan[key]:
                raise ZdiffError(f"{out}: holds an unfinished tokenization with another {key} (the inputs changed?); "
                                 "delete it or choose another OUT")
        return False
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ZdiffError(f"{out}: exists and is not an unfinished `zdiff tokenize` output; choose another OUT")
    (out / "shards").mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved_path, json.dumps(plan))
    return True


def _run_units(root, units, plan, out, todo, workers, field) -> None:
    tasks = [(str(root), units[i], i, str(out), plan, field) for i in todo]
    total_bytes = sum(size for i in todo for _, size in plan["units"][i]["files"])
    pool = None
    if workers > 1 and len(tasks) > 1:
        import multiprocessing

        # fork (before the progress bar starts its thread): a spawned worker would import torch with zdiff.train
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = multiprocessing.get_context(method).Pool(min(workers, len(tasks)))
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenize", leave=False)
    tokens, started = 0, time.perf_counter()
    try:
        # in order; a unit's files are on disk before its result arrives
        results = pool.imap(tokenize_unit, tasks) if pool is not None else map(tokenize_unit, tasks)
        for (_, unit, index, *_), stats in zip(tasks, results):
            tokens += sum(stats[s]["tokens"] for s in SPLITS)
            bar.update(sum(size for _, size in plan["units"][index]["files"]))
            bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - started, 1e-9):,.0f}")
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()


_WORKER_TOKENIZERS: dict = {}


def _worker_tokenizer(identity: dict) -> Tokenizer:
    name = identity["name"]
    if name not in _WORKER_TOKENIZERS:
        _WORKER_TOKENIZERS[name] = Tokenizer(None if name == "bytes" else Path(name), identity["vocab_size"])
    return _WORKER_TOKENIZERS[name]


def tokenize_unit(task) -> dict:
    """One unit's shards (both splits) and counts file; runs in a worker process."""
    root, unit, index, out, plan, field = task
    tokenizer = _worker_tokenizer(plan["tokenizer"])
    stem = Path(out) / unit_stem(index)
    writers = {split: _SplitWriter(stem.with_name(f"{stem.name}.{split}"), plan["dtype"]) for split in SPLITS}
    try:
        batch: list[str] = []
        for text in unit_documents(Path(root), unit, field):
            batch.append(text)
            if len(batch) == ENCODE_BATCH:
                _write_batch(batch, tokenizer, writers)
                batch = []
        _write_batch(batch, tokenizer, writers)
        stats = {split: writer.commit() for split, writer in writers.items()}
    finally:
        for writer in writers.values():
            writer.discard()
    atomic_write_text(stem.with_suffix(".json"), json.dumps(stats))  # the unit's completion mark, last
    return stats


def _write_batch(texts: list[str], tokenizer: Tokenizer, writers: dict) -> None:
    if not texts:
        return
    for text, ids in zip(texts, tokenizer.encode_batch(texts)):
        if tokenizer.separator is not None:
            ids = np.append(ids, tokenizer.separator)
        writers["heldout" if is_heldout_document(text) else "train"].add(ids, len(text.encode("utf-8", "replace")))


class _SplitWriter:
    """Tokens streamed to a temporary .bin, renamed with its .idx at commit."""

    def __init__(self, stem: Path, dtype: str):
        self.bin, self.idx = stem.with_name(stem.name + ".bin"), stem.with_name(stem.name + ".idx")
        self.dtype = np.dtype(dtype)
        for path in (self.bin, self.idx):
            remove_stale_temporaries(path)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.bin.name}.tmp-{os.getpid()}-", dir=stem.parent)
        self.file = os.fdopen(fd, "wb")
        self.ends, self.tokens, self.bytes = [0], 0, 0

    def add(self, ids: np.ndarray, num_bytes: int) -> None:
        self.file.write(ids.astype(self.dtype).tobytes())
        self.tokens += len(ids)
        self.ends.append(self.tokens)
        self.bytes += num_bytes

    def commit(self) -> dict:
        self.file.close()
        fd, tmp_idx = tempfile.mkstemp(prefix=f".{self.idx.name}.tmp-{os.getpid()}-", dir=self.idx.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(np.asarray(self.ends, dtype=np.uint64).tobytes())
        os.replace(self.tmp, self.bin)
        os.replace(tmp_idx, self.idx)
        self.tmp = None
        return {"documents": len(self.ends) - 1, "tokens": self.tokens, "bytes": self.bytes}

    def discard(self) -> None:
        if self.tmp is not None:
            self.file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)
