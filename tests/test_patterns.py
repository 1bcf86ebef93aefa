"""The three TiDAR layouts: structure, and exact tile classification against the dense mask."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transcribed_layouts import brute_force_decode, brute_force_training
from zdiff.errors import ZdiffError
from zdiff.pattern import (
    Tile,
    classify_tile,
    decode_pattern,
    dense_tile_map,
    prefill_pattern,
    tile_map,
    training_pattern,
)


@settings(max_examples=60, deadline=None)
@given(S=st.integers(1, 40), b=st.integers(1, 12))
def test_training_layout_matches_design(S, b):
    p = training_pattern(S, b)
    assert torch.equal(p.dense_mask(), brute_force_training(S, b))
    assert p.positions().tolist() == list(range(S)) * 2
    pred = p.predecessors()
    for j in range(S):
        # inside a block: the previous mask; a block's first mask: the clean token before the block
        assert pred[S + j].item() == (S + j - 1 if j % b else j - 1)


@settings(max_examples=60, deadline=None)
@given(C=st.integers(0, 30), b=st.integers(1, 10), data=st.data())
def test_decode_layout_matches_design(C, b, data):
    m = data.draw(st.integers(0, b - 1))
    levels = tuple(sorted(data.draw(st.sets(st.integers(0, m), min_size=1, max_size=m + 1))))
    p = decode_pattern(C, m, b, levels)
    assert torch.equal(p.dense_mask(), brute_force_decode(C, m, b, levels))
    L = C + 1
    assert p.positions()[C: C + m + 1].tolist() == list(range(L - 1, L + m))
    pred = p.predecessors()
    row = C + m + 1
    for a in levels:
        seg = p.segment_of_row(row)
        assert seg.name == f"proposal[a={a}]"
        assert p.positions()[row].item() == L + a  # slot 0 sits where the verifier's token goes
        assert pred[row].item() == C + a  # follows verify row a ...
        assert pred[pred[row]].item() == C + a - 1  # ... whose predecessor is verify row a-1 (or the cache)
        row += b


def test_prefill_layout():
    p = prefill_pattern(5, 4)
    mask = p.dense_mask()
    assert mask[:5, :5].equal(torch.ones(5, 5, dtype=torch.bool).tril()) and not mask[:5, 5:].any()
    assert mask[5:].all()  # the block sees the whole prompt and itself
    assert p.positions().tolist() == list(range(9)) and p.predecessors().tolist() == list(range(-1, 8))


def test_bad_layout_arguments():
    with pytest.raises(ZdiffError, match="drafts must be in 0..3"):
        decode_pattern(5, 4, 4, (0,))
    with pytest.raises(ZdiffError, match="strictly increasing in 0..2"):
        decode_pattern(5, 2, 4, (1, 1))
    with pytest.raises(ZdiffError, match="seq_len >= 1"):
        training_pattern(0, 4)


@settings(max_examples=150, deadline=None)
@given(layout=st.sampled_from(["training", "prefill", "decode"]), n=st.integers(1, 48), b=st.integers(1, 16),
       bm=st.sampled_from([1, 2, 3, 4, 8, 16, 32]), bn=st.sampled_from([1, 2, 4, 5, 8, 16, 64]), data=st.data())
def test_tile_classification_agrees_with_dense_mask(layout, n, b, bm, bn, data):
    if layout == "training":
        p = training_pattern(n, b)
    elif layout == "prefill":
        p = prefill_pattern(n, b)
    else:
        m = data.draw(st.integers(0, b - 1))
        levels = tuple(sorted(data.draw(st.sets(st.integers(0, m), min_size=1, max_size=min(m + 1, 5)))))
        p = decode_pattern(n - 1, m, b, levels)
    assert torch.equal(tile_map(p, bm, bn, queries_only=False), dense_tile_map(p, bm, bn, queries_only=False))
    # tiles that start anywhere, not only on the grid
    m0 = data.draw(st.integers(0, p.num_rows - 1))
    n0 = data.draw(st.integers(0, p.num_rows - 1))
    dense = p.dense_mask()[m0: m0 + bm, n0: n0 + bn]
    expected = Tile.FULL if dense.all() else Tile.EMPTY if not dense.any() else Tile.PARTIAL
    assert classify_tile(p, m0, m0 + bm, n0, n0 + bn) == expected


def test_training_layout_skips_most_tiles():
    """S = 4096, b = 16, 64 x 64 tiles: about a quarter of the score matrix is visible (DESIGN.md)."""
    p = training_pattern(4096, 16)
    tiles = tile_map(p, 64, 64, queries_only=False)
    visible = (tiles != Tile.EMPTY).float().mean().item()
    assert 0.25 < visible < 0.27
