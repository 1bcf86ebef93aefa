"""write_token_documents: token-id documents (a model's own samples) -> a shard set that reads back as the same
tokens, whole or absent."""

import numpy as np
import pytest

from zdiff.errors import ZdiffError
from zdiff.train.data import Tokenizer, split_corpus
from zdiff.train.tokenize_corpus import write_token_documents


def test_documents_read_back_as_written_with_separators(tmp_path):
    tokenizer = Tokenizer(None, 264)
    rng = np.random.default_rng(3)
    documents = [rng.integers(0, 256, size=n).tolist() for n in (40, 1, 57, 23)]
    manifest = write_token_documents(tmp_path / "samples", documents, tokenizer, "test", log=lambda *_: None)
    assert manifest["train"]["documents"] == 4
    train, heldout = split_corpus(str(tmp_path / "samples"), tokenizer)
    joined = [t for d in documents for t in [*d, tokenizer.separator]]
    # the held-out split is the tail of the same tokens (no document hashed into it)
    assert train.num_tokens + heldout.num_tokens == len(joined) and heldout.num_tokens >= 1
    stream = train.batch(0, 0, 1, train.num_tokens)  # check the training part token for token via its windows
    assert stream.shape == (1, train.num_tokens)
    assert stream[0].tolist() == joined[:train.num_tokens]
    assert heldout.windows(heldout.num_tokens - 1, 1)[0].tolist() == joined[train.num_tokens:-1]


def test_bad_ids_and_an_existing_out_leave_nothing_behind(tmp_path):
    tokenizer = Tokenizer(None, 264)
    with pytest.raises(ZdiffError, match="token ids outside 0..263"):
        write_token_documents(tmp_path / "bad", [[1, 2], [3, 999]], tokenizer, "test", log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "taken").mkdir()
    with pytest.raises(ZdiffError, match="already exists"):
        write_token_documents(tmp_path / "taken", [[1]], tokenizer, "test", log=lambda *_: None)
