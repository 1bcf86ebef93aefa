"""Training data: memory-mapped shards, mixtures, (seed, step)-pure batches read per rank, clear errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from training_helpers import micro_corpus, micro_spec
from zdiff.errors import ZdiffError
from zdiff.train.data import Tokenizer, discover, split_corpus, stdlib_files
from zdiff.train.mixture import parse_data
from zdiff.train.shards import is_heldout_document
from zdiff.train.tokenize_corpus import tokenize_corpus

BYTES = Tokenizer(None, 264)


def _tokenize(corpus, out):
    tokenize_corpus(str(corpus), out, BYTES, log=lambda _: None)
    return out


def test_stdlib_corpus_is_found_and_split_by_document_hash():
    root, files = stdlib_files()
    assert len(files) > 100 and all(f.suffix == ".py" for f in files)
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files[:400]]
    held = [t for t in texts if is_heldout_document(t)]
    assert 0.02 < len(held) / len(texts) < 0.09
    assert held == [t for t in texts if is_heldout_document(t)]


def test_raw_text_is_cached_as_shards_and_split_disjointly(tmp_path, monkeypatch):
    monkeypatch.setenv("ZDIFF_CACHE", str(tmp_path / "cache"))
    corpus = micro_corpus(tmp_path, files=12)
    train, held = split_corpus(str(corpus), BYTES)
    (cached,) = (tmp_path / "cache" / "data").iterdir()
    assert (cached / "manifest.json").is_file()
    texts = {f.name: f.read_bytes() for f in corpus.iterdir()}
    assert train.num_tokens + held.num_tokens == sum(len(t) + 1 for t in texts.values())
    assert held.num_tokens > 0 and train.sources[0].num_bytes + held.num_bytes == sum(len(t) for t in texts.values())
    again, _ = split_corpus(str(corpus), BYTES)  # a second run reads the cache, it does not tokenize again
    assert os.listdir(tmp_path / "cache" / "data") == [cached.name]
    assert torch.equal(again.batch(3, 5, 4, 33), train.batch(3, 5, 4, 33))


def test_batches_depend_only_on_seed_and_step_and_ranks_read_their_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("ZDIFF_CACHE", str(tmp_path / "cache"))
    train, _ = split_corpus(str(micro_corpus(tmp_path)), BYTES)
    a = train.batch(seed=1, step=7, batch_size=4, window=33)
    assert a.shape == (4, 33) and a.dtype == torch.int64
    assert torch.equal(a, train.batch(seed=1, step=7, batch_size=4, window=33))
    assert not torch.equal(a, train.batch(seed=1, step=8, batch_size=4, window=33))
    assert torch.equal(torch.cat([train.batch(1, 7, 4, 33, slice(0, 2)), train.batch(1, 7, 4, 33, slice(2, 4))]), a)
    # a rank reads only its own rows' windows
    _, offsets = train.plan(1, 7, 4, 33)
    read = []
    source = train.sources[0]
    monkeypatch.setattr(source, "gather", lambda o, w, real=source.gather: read.extend(o) or real(o, w))
    train.batch(1, 7, 4, 33, slice(2, 4))
    assert read == list(offsets[2:4])
    # windows are contiguous slices of the stream
    (tokens, start, stop), = train.sources[0].pieces
    stream = np.asarray(tokens[start:stop]).tolist()
    row = a[0].tolist()
    assert any(stream[i:i + 33] == row for i in range(len(stream) - 32))


def test_windows_cross_shard_boundaries(tmp_path, monkeypatch):
    from zdiff.train import documents

    monkeypatch.setattr(documents, "UNIT_FILES", 1)  # one shard per file
    out = _tokenize(micro_corpus(tmp_path, files=4), tmp_path / "shards")
    train, _ = split_corpus(str(out), BYTES)
    assert len(train.sources[0].pieces) >= 3
    stream = np.concatenate([np.asarray(t[a:b]) for t, a, b in train.sources[0].pieces]).astype(np.int64)
    first_end = int(train.sources[0].starts[1])
    rows = train.sources[0].gather([first_end - 5, 0, len(stream) - 40], 40)
    for row, offset in zip(rows, [first_end - 5, 0, len(stream) - 40]):
        assert row.tolist() == stream[offset:offset + 40].tolist()


def test_a_mixture_draws_sources_by_weight(tmp_path, monkeypatch):
    monkeypatch.setenv("ZDIFF_CACHE", str(tmp_path / "cache"))
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.txt").write_text("c" * 5000)
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "a.txt").write_text("w" * 5000)
    code = _tokenize(tmp_path / "code", tmp_path / "code.shards")
    train, held = split_corpus(f"{code}/manifest.json:0.7,{tmp_path / 'web'}:0.3", BYTES)
    counts = {"c": 0, "w": 0}
    for step in range(40):
        batch = train.batch(0, step, 25, 9)
        for row in batch:
            letters = {chr(t) for t in row.tolist() if t < 256}
            assert len(letters) == 1  # a row comes from one source
            counts[letters.pop()] += 1
        assert train.rows_per_source(0, step, 25, 9) == {
            f"{code}/manifest.json": int(sum(chr(int(r[0])) == "c" for r in batch)), str(tmp_path / "web"):
            int(sum(chr(int(r[0])) == "w" for r in batch))}
    # 1000 draws at p = 0.7: the count is 700 +- 14.5 (sd); 5 sd either side
    assert 627 < counts["c"] < 773, counts
    assert {chr(int(t)) for t in held.windows(9, 40).flatten() if t < 256} == {"c", "w"}


@pytest.mark.parametrize("data,reason", [
    ("a:0.5,b:x", "the weight 'x' of b is not a number"),
    ("a:0,b:0", "the weights sum to zero"),
    ("a:0.5,b", "'b' has no weight"),
    ("a:-1,b:2", "the weight of a must be a finite number >= 0"),
    ("a:1,a:2", "a source is named twice"),
])
def test_mixture_weights_that_do_not_parse(data, reason):
    with pytest.raises(ZdiffError, match=reason):
        parse_data(data)


def test_damaged_or_foreign_shards_are_refused_by_name(tmp_path):
    out = _tokenize(micro_corpus(tmp_path, files=3), tmp_path / "shards")
    manifest = json.loads((out / "manifest.json").read_text())
    shard = out / manifest["train"]["shards"][0]["path"]
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(out / "manifest.json", other / "manifest.json")
    with pytest.raises(ZdiffError, match=f"{other}/shards/00000.train.bin: shard listed by .* is missing"):
        split_corpus(str(other), BYTES)
    with pytest.raises(ZdiffError, match="shards were tokenized with 'bytes'"):
        hf = Tokenizer.__new__(Tokenizer)
        hf.tokenizer_json, hf.separator = tmp_path / "tokenizer.json", None
        (tmp_path / "tokenizer.json").write_text("{}")
        split_corpus(str(out), hf)
    with shard.open("r+b") as f:
        f.truncate(shard.stat().st_size - 2)
    with pytest.raises(ZdiffError, match=f"{shard}: truncated shard"):
        split_corpus(str(out / "manifest.json"), BYTES)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(ZdiffError, match="not a zdiff shard manifest"):
        split_corpus(str(out), BYTES)


def test_data_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("ZDIFF_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ZdiffError, match="no such file or directory"):
        discover(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZdiffError, match="holds no text, JSONL, Parquet or Arrow files"):
        discover(str(tmp_path / "empty"))
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("")
    with pytest.raises(ZdiffError, match="no text found"):
        split_corpus(str(tmp_path / "blank"), BYTES)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.bin").write_bytes(b"\0\1\2")
    with pytest.raises(ZdiffError, match="holds no text"):
        discover(str(tmp_path / "bin"))
    train, _ = split_corpus(str(micro_corpus(tmp_path, files=1)), BYTES)
    with pytest.raises(ZdiffError, match="fewer than one window"):
        train.check_window(train.num_tokens + 5)
    with pytest.raises(ZdiffError, match="byte-level training needs at least 259"):
        Tokenizer(None, 200)


RSS_LIMITED_TRAIN = """
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
from zdiff.cli import main
code = main(sys.argv[2:])
print("PEAK_RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
sys.exit(code)
"""


def _sparse_shards(out, tokens: int):
    """A shard set of `tokens` byte tokens that takes no disk (sparse files): the memory test's corpus."""
    shutil.copytree(out, out.with_name("big"))
    big = out.with_name("big")
    manifest = json.loads((big / "manifest.json").read_text())
    shard = manifest["train"]["shards"][0]
    for path, size in ((shard["path"], tokens * 2), (shard["index"], 16)):
        with open(big / path, "r+b") as f:
            f.truncate(size)
    with open(big / shard["path"], "r+b") as f:  # some real text at the front; the rest reads as zeros
        f.write(np.frombuffer(b"def f(x):\n    return x\n" * 100, dtype=np.uint8).astype(np.uint16).tobytes())
    for entry in manifest["train"]["shards"] + manifest["heldout"]["shards"]:
        if entry["path"] == shard["path"]:  # a tiny corpus's held-out split is a range of the same file
            entry.update(tokens=tokens, file_bytes=tokens * 2, documents=1)
    shard.update(stop=tokens)
    manifest["train"].update(tokens=tokens, documents=1)
    (big / "manifest.json").write_text(json.dumps(manifest))
    return big


def test_training_memory_does_not_grow_with_the_corpus(tmp_path):
    """A 6 GB corpus trains in a process whose private memory is capped at 2.5 GB (RLIMIT_DATA counts private
    mappings, not the read-only shard maps): the old loader, which read the corpus into RAM, could not."""
    small = _tokenize(micro_corpus(tmp_path, files=3), tmp_path / "small")
    big = _sparse_shards(small, tokens=3 << 30)
    limit = 2500 << 20
    cmd = [sys.executable, "-c", RSS_LIMITED_TRAIN, str(limit), "train", str(micro_spec(tmp_path)), "--data", str(big),
           "--mode", "ar", "--steps", "3", "--out", str(tmp_path / "run"), "--batch-size", "4", "--seq-len", "32",
           "--eval-windows", "2", "--checkpoint-every", "3"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    peak = int(result.stdout.split("PEAK_RSS")[1].split()[0])
    corpus_bytes = (3 << 30) * 2
    assert peak < 1200 << 20 < corpus_bytes, peak  # torch and the model: a few hundred MB, never the corpus
    assert json.loads((tmp_path / "run" / "run.json").read_text())["train_tokens"] == 3 << 30


def test_bad_data_through_the_cli_is_exit_2_and_writes_nothing(tmp_path):
    from cli_helpers import assert_error, run_main

    out = _tokenize(micro_corpus(tmp_path, files=3), tmp_path / "shards")
    base = ["train", micro_spec(tmp_path), "--mode", "ar", "--steps", "1", "--out", tmp_path / "run"]
    code, _, err = run_main([*base, "--data", f"{out}:0,{out}/manifest.json:0"], 60)
    assert_error(code, err, "the weights sum to zero")
    code, _, err = run_main([*base, "--data", f"{out}:1,{out}/manifest.json:heavy"], 60)
    assert_error(code, err, "the weight 'heavy' of")
    (out / "shards" / "00000.train.idx").unlink()
    code, _, err = run_main([*base, "--data", out], 60)
    assert_error(code, err, "00000.train.idx: shard listed by")
    assert not (tmp_path / "run").exists()
