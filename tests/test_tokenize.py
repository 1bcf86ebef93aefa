"""`zdiff tokenize`: every input kind -> shards whose tokens are the documents', identical for any worker
count, resumable after a kill, and bad input refused with nothing left behind."""

import gzip
import json
import os

import numpy as np
import pytest
from cli_helpers import assert_error, run_main

from zdiff.train import documents
from zdiff.train.data import Tokenizer
from zdiff.train.shards import is_heldout_document
from zdiff.train.tokenize_corpus import tokenize_corpus

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")

TEXTS = [f"document {i}: " + "abcdéfg"[i % 7:] * (i + 3) + "\n" for i in range(60)]


def _corpus(root):
    """60 documents spread over text files, JSONL (plain, gz, zst), Parquet and an Arrow stream."""
    root.mkdir()
    for i in range(6):
        (root / f"a{i}.txt").write_text(TEXTS[i])
    lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(TEXTS[6:20])]
    (root / "b.jsonl").write_text("\n".join(lines) + "\n\n")
    with gzip.open(root / "c.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[20:30]))
    (root / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps({"text": t}) + "\n" for t in TEXTS[30:40]).encode()))
    pq.write_table(pa.table({"text": TEXTS[40:50], "n": list(range(10))}), root / "e.parquet", row_group_size=3)
    table = pa.table({"text": TEXTS[50:60]})
    with pa.ipc.new_stream(root / "f.arrow", table.schema) as writer:
        writer.write_table(table, max_chunksize=4)
    return root


def _files(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _documents(out, split):
    manifest = json.loads((out / "manifest.json").read_text())
    docs = []
    for shard in manifest[split]["shards"]:
        tokens = np.fromfile(out / shard["path"], dtype=manifest["dtype"])
        ends = np.fromfile(out / shard["index"], dtype=np.uint64)
        assert ends[0] == 0 and ends[-1] == len(tokens) == shard["tokens"]
        for a, b in zip(ends[:-1], ends[1:]):
            assert tokens[b - 1] == 257  # the byte tokenizer's separator ends every document
            docs.append(bytes(tokens[a:b - 1].astype(np.uint8)).decode())
    return manifest, docs


def test_every_input_kind_becomes_its_documents_and_any_worker_count_writes_the_same(tmp_path, monkeypatch):
    corpus = _corpus(tmp_path / "corpus")
    monkeypatch.setattr(documents, "UNIT_FILES", 4)  # the six text files become two units
    one = tokenize_corpus(str(corpus), tmp_path / "one", Tokenizer(None, 264), workers=1, log=lambda _: None)
    tokenize_corpus(str(corpus), tmp_path / "three", Tokenizer(None, 264), workers=3, log=lambda _: None)
    assert _files(tmp_path / "one") == _files(tmp_path / "three")
    assert one["units"] == 7 and one["dtype"] == "uint16" and one["tokenizer"]["hash"] == "bytes"
    _, train = _documents(tmp_path / "one", "train")
    _, held = _documents(tmp_path / "one", "heldout")
    assert sorted(train + held) == sorted(TEXTS)
    assert held == [t for t in TEXTS if is_heldout_document(t)] and 0 < len(held) < 10
    assert one["train"]["documents"] + one["heldout"]["documents"] == 60
    assert one["train"]["bytes"] + one["heldout"]["bytes"] == sum(len(t.encode()) for t in TEXTS)


def test_a_killed_run_resumes_and_keeps_its_finished_units(tmp_path, monkeypatch):
    corpus = _corpus(tmp_path / "corpus")
    tokenize_corpus(str(corpus), tmp_path / "whole", Tokenizer(None, 264), log=lambda _: None)
    out = tmp_path / "killed"
    tokenize_corpus(str(corpus), out, Tokenizer(None, 264), log=lambda _: None)
    # what a kill during unit 3 leaves: no manifest, units 3.. without their completion mark, a temporary
    (out / "manifest.json").unlink()
    for stem in ("00003", "00004"):
        (out / "shards" / f"{stem}.json").unlink()
    (out / "shards" / "00003.train.bin").write_bytes(b"half")
    (out / "shards" / ".00003.train.bin.tmp-999999999-abc").write_bytes(b"partial")
    kept = (out / "shards" / "00001.train.bin").stat().st_ino
    said = []
    tokenize_corpus(str(corpus), out, Tokenizer(None, 264), log=said.append)
    assert said[0] == "[tokenize] resuming: 4 of 6 units already written"
    assert _files(out) == _files(tmp_path / "whole")
    assert (out / "shards" / "00001.train.bin").stat().st_ino == kept  # not rewritten
    # another input into the unfinished directory is refused
    (out / "manifest.json").unlink()
    (corpus / "a0.txt").write_text("changed")
    code, _, err = run_main(["tokenize", corpus, out])
    assert_error(code, err, "holds an unfinished tokenization with another units")


@pytest.mark.parametrize("name,content,reason", [
    ("bad.jsonl", '{"text": "ok"}\n{"text": oops}\n', "bad.jsonl:2: not a JSON line"),
    ("bad.jsonl", '{"text": "ok"}\n{"body": "x"}\n', "bad.jsonl:2: the record has no field 'text'"),
    ("bad.jsonl", '{"text": 3}\n', "bad.jsonl:1: field 'text' is a int, not a string"),
    ("bad.jsonl.gz", b"not gzip at all", "bad.jsonl.gz: cannot be read"),
    ("bad.jsonl.zst", b"not zstd at all", "bad.jsonl.zst: cannot be decompressed"),
    ("bad.parquet", b"PAR1 not really", "bad.parquet: cannot be read as parquet"),
])
def test_bad_input_names_the_file_and_leaves_nothing(tmp_path, name, content, reason):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "fine.txt").write_text("fine text")
    path = corpus / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    code, _, err = run_main(["tokenize", corpus, tmp_path / "out", "--workers", "2"])  # the error crosses processes
    assert_error(code, err, reason)
    assert os.listdir(tmp_path) == ["corpus"]


def test_parquet_without_the_field_and_cli_output(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pq.write_table(pa.table({"body": ["x" * 50]}), corpus / "p.parquet")
    code, _, err = run_main(["tokenize", corpus, tmp_path / "out"])
    assert_error(code, err, "p.parquet: has no column 'text' (columns: body")
    code, out, err = run_main(["tokenize", corpus, tmp_path / "out", "--field", "body", "--workers", "2"])
    assert code == 0, err
    assert "1 documents, " in out and (tmp_path / "out" / "manifest.json").is_file()
    code, _, err = run_main(["tokenize", corpus, tmp_path / "out", "--field", "body"])
    assert_error(code, err, "already holds tokenized shards")
    code, _, err = run_main(["tokenize", corpus, tmp_path / "o2", "--tokenizer", tmp_path / "nothing"])
    assert_error(code, err, "nothing: no tokenizer.json there")


def test_a_checkpoint_tokenizer_past_16_bits_writes_uint32(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(70_000)}}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "ck").mkdir()
    hf.save(str(tmp_path / "ck" / "tokenizer.json"))
    (tmp_path / "ck" / "spec.yaml").write_text("name: x\n")  # a checkpoint directory as --tokenizer
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = [" ".join(f"w{(i * 7919 + j * 104729) % 70_000}" for j in range(40)) for i in range(30)]
    (corpus / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    code, _, err = run_main(["tokenize", corpus, tmp_path / "out", "--tokenizer", tmp_path / "ck"])
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["dtype"] == "uint32" and manifest["tokenizer"]["hash"].startswith("sha256:")
    tokens = np.concatenate([np.fromfile(tmp_path / "out" / s["path"], dtype=np.uint32)[s["start"]:s["stop"]]
                             for split in ("train", "heldout") for s in manifest[split]["shards"]])
    expected = [i for t in texts for i in hf.encode(t, add_special_tokens=False).ids]
    assert sorted(tokens.tolist()) == sorted(expected) and max(expected) > 65_535


def test_a_datasets_directory_saved_to_disk_reads_only_its_tables(tmp_path):
    """The layout of `Dataset.save_to_disk` / `DatasetDict.save_to_disk`: Arrow streams next to JSON metadata."""
    root = tmp_path / "ds"
    for split, texts in (("train", TEXTS[:12]), ("test", TEXTS[12:15])):
        (root / split).mkdir(parents=True)
        table = pa.table({"text": texts, "label": list(range(len(texts)))})
        with pa.ipc.new_stream(root / split / "data-00000-of-00001.arrow", table.schema) as writer:
            writer.write_table(table)
        state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}
        (root / split / "state.json").write_text(json.dumps(state))
        (root / split / "dataset_info.json").write_text(json.dumps({"features": {"text": {"dtype": "string"}}}))
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    manifest = tokenize_corpus(str(root), tmp_path / "out", Tokenizer(None, 264), log=lambda _: None)
    assert manifest["units"] == 2
    _, train = _documents(tmp_path / "out", "train")
    _, held = _documents(tmp_path / "out", "heldout")
    assert sorted(train + held) == sorted(TEXTS[:15])


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_output(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(300):  # one unit per JSONL file: plenty of commit points
        (corpus / f"p{i:03d}.jsonl").write_text("".join(json.dumps({"text": f"{i} {t}" * 40}) + "\n" for t in TEXTS))
    tokenize_corpus(str(corpus), tmp_path / "whole", Tokenizer(None, 264), log=lambda _: None)
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    victim = subprocess.Popen([sys.executable, "-m", "zdiff", "tokenize", str(corpus), str(out)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "shards" / "00005.json").is_file():
        time.sleep(0.005)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (out / "manifest.json").exists()
    code, stdout, err = run_main(["tokenize", corpus, out])
    assert code == 0, err
    assert "[tokenize] resuming:" in stdout
    assert _files(out) == _files(tmp_path / "whole")
