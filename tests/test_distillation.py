"""Self-distillation of the diffusion rows (spec diffusion.loss): the chunked divergence equals a float64
full-logits reference in value and gradient, no gradient reaches the teacher rows, the objective equals its
float64 reference on both backends (the generated kernels under TRITON_INTERPRET) without full logits, and
bad weights are one-line spec errors."""

import dataclasses

import pytest
import torch
from test_train_triton import _grads, _model, no_dense_mask  # noqa: F401 (a fixture)

from conftest import assert_close
from training_helpers import MICRO_SPEC
from zdiff.errors import SpecError
from zdiff.pattern import BatchLayout, training_pattern
from zdiff.runtime.model import ForwardOutput
from zdiff.spec import parse_spec
from zdiff.spec.schema import DiffusionLossSpec
from zdiff.train.linear_distill import linear_divergence
from zdiff.train.objective import Objective


def _reference_divergence(student, teacher, weight, divergence):
    log_p = torch.log_softmax(teacher.double() @ weight.double().t(), -1).detach()
    log_q = torch.log_softmax(student @ weight.t(), -1)
    if divergence == "forward_kl":
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


@pytest.mark.parametrize("divergence", ["forward_kl", "tv"])
@pytest.mark.parametrize("rows_per_chunk", [3, None])  # 3: ragged chunks of the 7 rows
def test_chunked_divergence_equals_float64_reference(divergence, rows_per_chunk):
    gen = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(7, 8, generator=gen), torch.randn(7, 8, generator=gen)
    weight, upstream = torch.randn(13, 8, generator=gen), torch.rand(7, generator=gen) + 0.5
    s64, w64 = student.double().requires_grad_(), weight.double().requires_grad_()
    want = _reference_divergence(s64, teacher, w64, divergence)
    (want * upstream.double()).sum().backward()
    s, t, w = student.requires_grad_(), teacher.clone().requires_grad_(), weight.requires_grad_()
    got = linear_divergence(s, t, w, divergence, rows_per_chunk=rows_per_chunk)
    (got * upstream).sum().backward()
    assert (want > 1e-3).all()  # a real, non-degenerate divergence per row
    assert_close(got, want, rtol=1e-5, atol=1e-7, what=f"{divergence} value")
    assert_close(s.grad, s64.grad, rtol=1e-4, atol=1e-6, what=f"d student ({divergence})")
    assert_close(w.grad, w64.grad, rtol=1e-4, atol=1e-6, what=f"d weight ({divergence})")
    assert t.grad is None or not t.grad.any()  # the teacher is a target


def _spec(data_weight, distill_weight, divergence, alpha=0.5):
    spec = parse_spec(MICRO_SPEC)
    loss = DiffusionLossSpec(data_weight, distill_weight, divergence)
    return dataclasses.replace(spec, diffusion=dataclasses.replace(spec.diffusion, loss_alpha=alpha, loss=loss))


def test_distillation_sends_no_gradient_to_the_teacher_rows():
    spec, S = _spec(0.0, 1.0, "forward_kl"), 6
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 2 * S, 32, generator=gen, requires_grad=True)
    head = torch.randn(264, 32, generator=gen, requires_grad=True)
    window = torch.randint(0, 256, (2, S + 1), generator=gen)
    _, _, distillation, term = \
        Objective(spec, "tidar", S).tidar_terms(hidden, head, window)
    distillation.backward()
    assert not hidden.grad[:, :S].any()  # clean (teacher) rows: nothing from the distillation term
    assert not hidden.grad[:, S].any()  # mask row 0 has no teacher
    assert hidden.grad[:, S + 1:].abs().amin(-1).gt(0).all() and head.grad.any()
    assert_close(term, distillation, rtol=0, what="distill-only term")


def _float64_objective(model, spec, window, layout_only, reduce=None):
    """Full logits in float64: alpha * CE_AR + data_weight * CE_diff + distill_weight * D(p_{j-1} || q_j);
    `reduce(values (B, n), n)` averages the last n mask rows' terms (a plain mean unless given)."""
    reduce = reduce or (lambda values, n: values.mean())
    x, labels = window[:, :-1], window[:, 1:]
    (B, S), diffusion, weights = x.shape, spec.diffusion, spec.diffusion.loss
    pattern = training_pattern(S, diffusion.block_size)
    ids = torch.cat([x, torch.full_like(x, diffusion.mask_token_id)], dim=1)
    logits = model(ids, positions=pattern.positions(), predecessors=pattern.predecessors(),
                   visible=None if layout_only else pattern.dense_mask(),
                   layout=BatchLayout.training(B, S, diffusion.block_size)).double()
    log_probs = torch.log_softmax(logits, -1)
    ar = -log_probs[:, :S].gather(-1, labels[..., None]).mean()
    data = reduce(-log_probs[:, S:].gather(-1, x[..., None])[..., 0], S)
    log_p, log_q = log_probs[:, :S - 1].detach(), log_probs[:, S + 1:]
    if weights.divergence == "forward_kl":
        distill = reduce((log_p.exp() * (log_p - log_q)).sum(-1), S - 1)
    else:
        distill = reduce(0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1), S - 1)
    term = weights.data_weight * data + weights.distill_weight * distill
    return (diffusion.loss_alpha * ar + term) / (1 + diffusion.loss_alpha), distill


@pytest.mark.parametrize("backend,divergence,batch", [("torch", "forward_kl", 2), ("torch", "tv", 2),
                                                      ("triton", "forward_kl", 1)])
def test_objective_with_distillation_equals_float64_reference(backend, divergence, batch, monkeypatch, tmp_path,
                                                              request):
    check_objective_against_float64(_spec(0.7, 0.6, divergence), backend, batch, 1, _float64_objective,
                                    monkeypatch, tmp_path, request)


def check_objective_against_float64(spec, backend, batch, seed, reference, monkeypatch, tmp_path, request):
    """The objective's loss, distillation and every gradient equal `reference(model, spec, window, layout_only)`
    (float64, full logits) on a model with sharpened logits, and the objective never builds full logits."""
    model = _model(spec, backend, monkeypatch, tmp_path)
    with torch.no_grad():  # sharper logits than a random init's near-uniform ones: a divergence far from 0
        model.embed.weight.mul_(20)
    window = torch.randint(0, 256, (batch, 6 + 1), generator=torch.Generator().manual_seed(seed))  # S = 6: ragged
    want, want_distill = reference(model, spec, window, layout_only=backend == "triton")
    assert want_distill > 0.05
    want.backward()
    want_grads = _grads(model)
    if backend == "triton":
        request.getfixturevalue("no_dense_mask")

    def no_logits(_):
        raise AssertionError("full logits were built")
    monkeypatch.setattr(ForwardOutput, "logits", property(no_logits))
    parts = Objective(spec, "tidar", 6, backend)(model, window)
    parts.total.backward()
    assert_close(parts.total, want, rtol=1e-5, what="loss")
    assert_close(parts.distillation, want_distill, rtol=1e-5, what="distillation")
    for (name, _), got, ref in zip(model.named_parameters(), _grads(model), want_grads):
        assert_close(got, ref, rtol=1e-4, atol=1e-6, what=f"d {name}")


def test_default_targets_mix_data_and_self_distillation_and_bad_weights_are_one_line_errors():
    """The default is the recipe study's best (STUDY.md): data + self-distillation, forward KL, both at weight 1."""
    assert parse_spec(MICRO_SPEC).diffusion.loss == DiffusionLossSpec(1.0, 1.0, "forward_kl")
    cases = [("{distill_weight: -0.5}", "diffusion.loss.distill_weight: must not be negative, got -0.5"),
             ("{data_weight: 0, distill_weight: 0}", "diffusion.loss.distill_weight: and data_weight are both 0"),
             ("{divergence: reverse_kl}", "diffusion.loss.divergence: must be one of forward_kl, tv, got"),
             ("{distill_weigth: 1}", "diffusion.loss.distill_weigth: unknown key; did you mean 'distill_weight'?")]
    for loss, message in cases:
        text = MICRO_SPEC.replace("loss_alpha: 1.0}", f"loss_alpha: 1.0, loss: {loss}}}")
        with pytest.raises(SpecError) as info:
            parse_spec(text)
        assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)
