"""The reference model on TiDAR patterns equals running each piece on its own.

One decode-step forward must give the verify rows' AR logits of a plain causal run, and
each proposal block's logits of a run over its explicit prefix (causal) followed by the
block (bidirectional). Same for the training layout. This pins down positions, predecessors
(CCA convolutions, delayed values) and visibility together.
"""

import pytest
import torch

from conftest import assert_close
from zdiff.pattern import decode_pattern, training_pattern
from zdiff.runtime import build_model
from zdiff.spec import load_spec

MASK = 258


@pytest.fixture(params=["zaya1-tiny", "qwen3-moe-tiny"], scope="module")
def model(request):
    return build_model(load_spec(request.param).model, seed=3).eval()


def prefix_then_block(model, prefix: torch.Tensor, block_len: int) -> torch.Tensor:
    """Logits of `block_len` masks after `prefix`: causal prefix, bidirectional block, plain positions."""
    ids = torch.cat([prefix, torch.full((1, block_len), MASK)], dim=1)
    T, P = ids.shape[1], prefix.shape[1]
    visible = torch.ones(T, T, dtype=torch.bool).tril()
    visible[P:, P:] = True
    return model(ids, visible=visible)[:, P:]


@pytest.mark.parametrize("C,m,b,levels",
                         [(9, 5, 6, (0, 2, 5)), (1, 3, 4, (0, 1, 2, 3)), (6, 0, 3, (0,)), (0, 2, 4, (1, 2))])
def test_decode_step_equals_separate_runs(model, C, m, b, levels):
    p = decode_pattern(C, m, b, levels)
    committed = torch.randint(0, 256, (1, C + 1 + m))  # context, pending c, drafts d_1..d_m
    ids = torch.cat([committed, torch.full((1, b * len(levels)), MASK)], dim=1)
    with torch.no_grad():
        logits = model(ids, positions=p.positions(), predecessors=p.predecessors(), visible=p.dense_mask())
        verify = slice(C, C + m + 1)
        assert_close(logits[:, verify], model(committed)[:, verify], rtol=1e-5, atol=1e-5, what="verify rows")
        for a in levels:
            seg = p.segment(f"proposal[a={a}]")
            expected = prefix_then_block(model, committed[:, : C + a + 1], b)
            assert_close(logits[:, seg.start: seg.stop], expected, rtol=1e-5, atol=1e-5, what=seg.name)


@pytest.mark.parametrize("S,b", [(12, 4), (10, 4), (7, 8)])
def test_training_layout_equals_separate_runs(model, S, b):
    p = training_pattern(S, b)
    x = torch.randint(0, 256, (2, S))
    ids = torch.cat([x, torch.full((2, S), MASK)], dim=1)
    with torch.no_grad():
        logits = model(ids, positions=p.positions(), predecessors=p.predecessors(), visible=p.dense_mask())
        assert_close(logits[:, :S], model(x), rtol=1e-5, atol=1e-5, what="clean half")
        for first in range(0, S, b):
            length = min(b, S - first)
            block = logits[:, S + first: S + first + length]
            if first == 0:  # no prefix: the block alone, bidirectional, positions 0..
                ids0 = torch.full((2, length), MASK)
                expected = model(ids0, visible=torch.ones(length, length, dtype=torch.bool))
            else:
                expected = torch.cat([prefix_then_block(model, x[i: i + 1, :first], length) for i in range(2)])
            assert_close(block, expected, rtol=1e-5, atol=1e-5, what=f"mask block at {first}")
