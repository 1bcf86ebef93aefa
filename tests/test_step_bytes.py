"""The analytic bytes of a decode step outside the forward (zdiff.generation.step_bytes), hand-computed on
zaya1-tiny (b 8, 4 layers, CCGQA 4q/2kv x 32) and how they scale."""

import pytest

from zdiff.generation.step_bytes import step_bytes_outside_forward
from zdiff.spec import load_spec


def test_step_bytes_hand_computed_on_zaya1_tiny():
    model = load_spec("zaya1-tiny").model
    V, b, B = model.vocab_size, 8, 2
    got = step_bytes_outside_forward(model, b, B, proposals=2, dtype_bytes=2)
    rows = b + 7  # verify rows + the chosen block's draft rows
    rf = model.attention.cca.receptive_field
    assert got["logits"] == B * rows * V * 2  # written once, in the model dtype
    assert got["draft_rows"] == B * 7 * model.hidden_size * 2 * 2
    assert got["verifier"] == 2 * B * rows * V * 2
    assert got["draft_sampling"] == B * 7 * V * 2
    # per layer: 8 K and 8 V rows of 2 x 32 read and written, rf rows of [q|k] (192) + v_delayed (32) read and written
    assert got["commit"] == 4 * B * (2 * 2 * 8 * 64 + 2 * rf * (192 + 32)) * 2
    assert got["layout_bookkeeping"] == B * 8 * (3 * (8 + 2 * 8) + rf + 2 * 12 + 16)


@pytest.mark.parametrize("proposals", [0, 3])
def test_step_bytes_scale_with_batch_and_ar_steps_have_no_draft_traffic(proposals):
    model = load_spec("zaya1-tiny").model
    one, eight = (step_bytes_outside_forward(model, 8, B, proposals) for B in (1, 8))
    assert all(eight[k] == 8 * one[k] for k in one)
    if proposals == 0:
        assert one["draft_sampling"] == one["draft_rows"] == 0
        assert one["logits"] == model.vocab_size * 2


def test_a_zaya1_8b_step_moves_at_most_a_tenth_of_its_forward_outside_it():
    """Issue 19's bound at B = 32 with the spec's three proposal blocks (context 4096, the cost model's forward)."""
    from zdiff.autotune.cost import CostModel
    from zdiff.autotune.targets import target_rates

    spec = load_spec("zaya1-8b")
    outside = sum(step_bytes_outside_forward(spec.model, spec.diffusion.block_size, 32, 3).values())
    forward = CostModel(spec, target_rates("h200")).forward(32, 4096, 3).bytes
    assert outside <= 0.10 * forward, outside / forward


def test_filtered_steps_add_the_filter_passes_and_fp32_reads():
    """top-k / top-p: verify rows + drafts + next drafts read FILTER_PASSES times and written once in fp32; the
    verifier (twice) and the draft sampler then read fp32 instead of the model dtype. Nothing else changes."""
    from zdiff.generation.step_bytes import FILTER_PASSES

    model = load_spec("zaya1-tiny").model
    V, b, B = model.vocab_size, 8, 3
    plain = step_bytes_outside_forward(model, b, B, proposals=2)
    filtered = step_bytes_outside_forward(model, b, B, proposals=2, filtered=True)
    assert {k: v for k, v in filtered.items() if k != "filter"} == plain
    assert filtered["filter"] == B * (8 + 14) * V * (FILTER_PASSES * 2 + 4) + B * (2 * 15 + 7) * V * 2
