"""Slot weights of the diffusion loss (spec diffusion.loss.draft_acceptance): equal to how often a simulated
decoder judges each slot's draft, the closed form when every level is proposed, the objective equal to its
float64 reference on both backends, no gradient into slot-0 rows, and bad rates as one-line spec errors."""

import dataclasses

import numpy as np
import pytest
import torch
from test_distillation import _float64_objective, _spec, check_objective_against_float64
from test_train_triton import no_dense_mask  # noqa: F401 (a fixture)

from conftest import assert_close
from training_helpers import MICRO_SPEC
from zdiff.autotune.cost import draft_slot_weights
from zdiff.errors import SpecError
from zdiff.spec import parse_spec
from zdiff.train.objective import Objective


def _simulated_judgements(levels, block_size, rate, steps, seed):
    """Decode `steps` steps with i.i.d. acceptance: per slot, how many times its draft was judged."""
    rng = np.random.default_rng(seed)
    judged, offset = np.zeros(block_size), 0  # the first drafts after prefill are slots 1..b-1
    for _ in range(steps):
        offered = block_size - 1 - offset
        accepted = 0
        while accepted < offered:
            judged[offset + 1 + accepted] += 1
            if rng.random() >= rate:
                break
            accepted += 1
        offset = accepted - max(a for a in levels if a <= accepted)
    return judged


@pytest.mark.parametrize("levels,block_size,rate", [((0, 2, 4), 8, 0.5), ((0,), 8, 0.3), ((0, 3), 6, 0.8),
                                                    ((0, 1, 5), 7, 0.65)])
def test_slot_weights_equal_a_simulated_decoder(levels, block_size, rate):
    steps = 60_000
    judged = _simulated_judgements(levels, block_size, rate, steps, seed=block_size)
    want = judged * block_size / judged.sum()
    got = np.array(draft_slot_weights(levels, block_size, rate))
    assert got[0] == 0 and (got[1:] > 0).all()
    # a judged count per step is a sum of Bernoullis over weakly dependent steps: 5 standard errors, plus slack
    # for the normalisation's own noise
    stderr = np.sqrt(np.maximum(judged, 1)) * block_size / judged.sum()
    assert np.all(np.abs(got - want) < 5 * stderr + 2e-3), (got.round(4), want.round(4))


def test_every_level_proposed_gives_geometric_weights_and_fewer_levels_shift_weight_back():
    rate, b = 0.6, 8
    got = np.array(draft_slot_weights(tuple(range(b)), b, rate))
    want = np.array([0] + [rate ** (s - 1) for s in range(1, b)])
    assert_close(torch.tensor(got), torch.tensor(want * b / want.sum()), rtol=1e-9, what="all levels")
    # with levels (0, 2, 4) an accepted count of 1 or 3 leaves the next drafts one slot later: slot 2 is
    # judged as often as slot 1 at rate 0.5, unlike the geometric halving
    sparse = draft_slot_weights((0, 2, 4), b, 0.5)
    assert sparse[2] == pytest.approx(sparse[1], rel=1e-9) and sparse[3] < sparse[2]


def _weighted(rate):
    spec = _spec(0.7, 0.6, "forward_kl")
    loss = dataclasses.replace(spec.diffusion.loss, draft_acceptance=rate)
    return dataclasses.replace(spec, diffusion=dataclasses.replace(spec.diffusion, loss=loss))


def test_slot_zero_rows_get_no_gradient_and_the_weights_follow_the_slots():
    spec, S, b = _weighted(0.4), 7, 4
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 2 * S, 32, generator=gen, requires_grad=True)
    head = torch.randn(264, 32, generator=gen, requires_grad=True)
    window = torch.randint(0, 256, (2, S + 1), generator=gen)
    ar, diffusion, distillation, term = Objective(spec, "tidar", S).tidar_terms(hidden, head, window)
    term.backward()
    mask_grads = hidden.grad[:, S:].abs().amax(-1)  # (B, S)
    slot = torch.arange(S) % b
    assert not mask_grads[:, slot == 0].any()
    assert mask_grads[:, slot != 0].gt(0).all()
    assert not hidden.grad[:, :S].any()  # the teacher rows: no gradient from the diffusion term
    uniform = Objective(_spec(0.7, 0.6, "forward_kl"), "tidar", S).tidar_terms(hidden, head, window)
    assert_close(diffusion, uniform[1], rtol=0, what="the logged diffusion loss stays unweighted")
    assert not torch.isclose(term, uniform[3]), "the weights changed nothing"


def _float64_weighted_objective(model, spec, window, layout_only):
    """The float64 reference of test_distillation, with each mask row's terms weighted by its slot."""
    S, diffusion = window.shape[1] - 1, spec.diffusion
    w = torch.tensor(draft_slot_weights(diffusion.acceptance_levels, diffusion.block_size,
                                        diffusion.loss.draft_acceptance), dtype=torch.float64)
    w = w[torch.arange(S) % diffusion.block_size]

    def weighted_mean(values, n):  # values (B, n) of mask rows S - n .. S - 1
        return ((values * w[S - n:]).sum(-1) / w[S - n:].sum()).mean()
    return _float64_objective(model, spec, window, layout_only, reduce=weighted_mean)


@pytest.mark.parametrize("backend,batch", [("torch", 2), ("triton", 1)])
def test_weighted_objective_equals_float64_reference(backend, batch, monkeypatch, tmp_path, request):
    check_objective_against_float64(_weighted(0.45), backend, batch, 4, _float64_weighted_objective,
                                    monkeypatch, tmp_path, request)


@pytest.mark.parametrize("value,message", [
    ("1.0", "diffusion.loss.draft_acceptance: must be in (0, 1)"), ("0", "diffusion.loss.draft_acceptance: must be"),
    ("-0.2", "diffusion.loss.draft_acceptance: must be"), (".nan", "diffusion.loss.draft_acceptance: must be"),
    ("high", "diffusion.loss.draft_acceptance: must be a number")])
def test_bad_draft_acceptance_is_a_one_line_spec_error(value, message):
    assert parse_spec(MICRO_SPEC).diffusion.loss.draft_acceptance is None  # uniform unless asked
    text = MICRO_SPEC.replace("loss_alpha: 1.0}", f"loss_alpha: 1.0, loss: {{draft_acceptance: {value}}}}}")
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)
