"""The corpus: deterministic split, step-indexed batches, clear errors."""

import pytest
import torch

from training_helpers import micro_corpus
from zdiff.errors import ZdiffError
from zdiff.train.data import Tokenizer, discover, is_heldout, load_corpus, split_corpus, stdlib_files


def test_stdlib_corpus_split_is_deterministic_and_disjoint():
    root, files = stdlib_files()
    assert len(files) > 100 and all(f.suffix == ".py" for f in files)
    held = [f for f in files if is_heldout(root, f)]
    assert 0.02 < len(held) / len(files) < 0.09
    assert held == [f for f in stdlib_files()[1] if is_heldout(root, f)]


def test_small_corpora_still_hold_one_file_out(tmp_path):
    corpus = micro_corpus(tmp_path, files=3)
    train, held = split_corpus(str(corpus), Tokenizer(None, 264))
    assert (train.num_files, held.num_files) == (2, 1)


def test_batches_depend_only_on_seed_and_step(tmp_path):
    stream = load_corpus(str(micro_corpus(tmp_path)), Tokenizer(None, 264), heldout=None)
    a = stream.batch(seed=1, step=7, batch_size=4, window=33)
    assert a.shape == (4, 33)
    assert torch.equal(a, stream.batch(seed=1, step=7, batch_size=4, window=33))
    assert not torch.equal(a, stream.batch(seed=1, step=8, batch_size=4, window=33))
    # windows are contiguous slices of the stream
    text = stream.tokens.tolist()
    row = a[0].tolist()
    assert any(text[i:i + 33] == row for i in range(len(text) - 32))


def test_bytes_and_separators(tmp_path):
    (tmp_path / "a.txt").write_text("héllo")
    (tmp_path / "b.txt").write_text("ab")
    stream = load_corpus(str(tmp_path), Tokenizer(None, 264), heldout=None)
    assert stream.tokens.tolist() == list("héllo".encode()) + [257] + [97, 98, 257]
    assert stream.num_bytes == 8 and stream.num_files == 2


def test_single_file_is_split_by_position(tmp_path):
    (tmp_path / "one.txt").write_text("x" * 4000)
    train, held = split_corpus(str(tmp_path / "one.txt"), Tokenizer(None, 264))
    assert len(train.tokens) + len(held.tokens) == 4001 and len(held.tokens) > 150


def test_data_errors(tmp_path):
    with pytest.raises(ZdiffError, match="no such file or directory"):
        discover(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZdiffError, match="holds no text files"):
        discover(str(tmp_path / "empty"))
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("")
    with pytest.raises(ZdiffError, match="no text found"):
        load_corpus(str(tmp_path / "blank"), Tokenizer(None, 264), heldout=None)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.bin").write_bytes(b"\0\1\2")
    with pytest.raises(ZdiffError, match="holds no text files"):
        discover(str(tmp_path / "bin"))
    stream = load_corpus(str(micro_corpus(tmp_path, files=1)), Tokenizer(None, 264), heldout=None)
    with pytest.raises(ZdiffError, match="fewer than one window"):
        stream.batch(0, 0, 2, len(stream.tokens) + 5)
    with pytest.raises(ZdiffError, match="byte-level training needs at least 259"):
        Tokenizer(None, 200)
