"""Training on the generated kernels (backend "triton", TRITON_INTERPRET on the CPU): the objective reads
only the BatchLayout (building a dense mask fails the test), its chunked loss equals the full-logits loss
and gradients, activation checkpointing recomputes layers without changing gradients, and peak memory
per sequence grows linearly in S (the reference path's does not)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close
from training_helpers import MICRO_DENSE_SPEC, MICRO_SPEC
from zdiff.pattern import BatchLayout, Pattern, training_pattern
from zdiff.spec import parse_spec
from zdiff.spec.schema import DiffusionLossSpec
from zdiff.train.memory import estimate_training_memory
from zdiff.train.model_init import model_class, random_model
from zdiff.train.objective import Objective

ONE_LAYER = MICRO_SPEC.replace("num_layers: 2", "num_layers: 1")


def _model(spec, backend, monkeypatch, tmp_path, seed=3):
    monkeypatch.setenv("ZDIFF_CACHE", str(tmp_path / "cache"))
    model = random_model(model_class(spec, backend, "cpu"), spec.model, seed, "cpu")
    with torch.no_grad():  # move scales and biases off their initial values so a miswired one shows
        gen = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.add_((0.1 if p.dim() == 1 else 0.5 * p.std().item()) * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture
def no_dense_mask(monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("a dense visibility mask was built on the triton path")

    monkeypatch.setattr(BatchLayout, "dense_visible", refuse)
    monkeypatch.setattr(Pattern, "dense_mask", refuse)


def _full_logits_loss(model, spec, mode, window, layout_only):
    """The objective as it was: fp32 logits for every row, F.cross_entropy per half."""
    x, labels = window[:, :-1], window[:, 1:]
    B, S = x.shape
    b = spec.diffusion.block_size
    if mode == "ar":
        logits = model(x, layout=BatchLayout.training(B, S, b, diffusion=False))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)), None
    pattern = training_pattern(S, b)
    ids = torch.cat([x, torch.full_like(x, spec.diffusion.mask_token_id)], dim=1)
    visible = None if layout_only else pattern.dense_mask()
    logits = model(
        ids,
        positions=pattern.positions(),
        predecessors=pattern.predecessors(),
        visible=visible,
        layout=BatchLayout.training(B, S, b),
    )
    ar = F.cross_entropy(logits[:, :S].reshape(-1, logits.shape[-1]), labels.reshape(-1))
    diffusion = F.cross_entropy(logits[:, S:].reshape(-1, logits.shape[-1]), x.reshape(-1))
    alpha = spec.diffusion.loss_alpha
    return (alpha * ar + diffusion) / (1 + alpha), (ar, diffusion)


def _grads(model):
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("backend,mode,batch,text", [("triton", "tidar", 2, MICRO_SPEC), ("triton", "ar", 1, ONE_LAYER),
                                                     ("torch", "tidar", 2, MICRO_SPEC),
                                                     ("triton", "tidar", 2, MICRO_DENSE_SPEC)],
                         ids=["triton-tidar", "triton-ar", "torch-tidar", "triton-tidar-dense"])
def test_chunked_objective_equals_the_full_logits_loss(backend, mode, batch, text, monkeypatch, tmp_path, request):
    spec = parse_spec(text)
    # data targets only: the self-distillation term has its own float64 reference (tests/test_distillation.py)
    spec = dataclasses.replace(spec, diffusion=dataclasses.replace(spec.diffusion, loss_alpha=0.5,
                                                                   loss=DiffusionLossSpec(1.0, 0.0)))
    model = _model(spec, backend, monkeypatch, tmp_path)
    window = torch.randint(0, 256, (batch, 6 + 1), generator=torch.Generator().manual_seed(1))  # S = 6: a ragged block
    want, halves = _full_logits_loss(model, spec, mode, window, layout_only=backend == "triton")
    want.backward()
    want_grads = _grads(model)
    if backend == "triton":
        request.getfixturevalue("no_dense_mask")
    parts = Objective(spec, mode, 6, backend)(model, window)
    parts.total.backward()
    assert_close(parts.total, want, rtol=1e-5, what="loss")
    if halves is not None:
        assert_close(parts.ar, halves[0], rtol=1e-5, what="AR loss")
        assert_close(parts.diffusion, halves[1], rtol=1e-5, what="diffusion loss")
    for (name, _), got, ref in zip(model.named_parameters(), _grads(model), want_grads):
        assert_close(got, ref, rtol=1e-5, atol=1e-7, what=f"d {name}")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_activation_checkpointing_recomputes_layers_with_the_same_gradients(backend, monkeypatch, tmp_path):
    spec = parse_spec(MICRO_SPEC)
    model = _model(spec, backend, monkeypatch, tmp_path)
    window = torch.randint(0, 256, (1, 3 + 1), generator=torch.Generator().manual_seed(2))
    objective = Objective(spec, "tidar", 3, backend)
    calls = []
    layer_fn = type(model.layers[0]).forward  # one layer loop: Block.forward runs for both backends
    monkeypatch.setattr(
        type(model.layers[0]), "forward", lambda *args, **kwargs: calls.append(1) or layer_fn(*args, **kwargs)
    )
    results = {}
    for on in (False, True):
        calls.clear()
        model.activation_checkpointing = on
        parts = objective(model, window)
        parts.total.backward()
        results[on] = parts.total.detach(), _grads(model), len(calls)
    assert results[False][2] == 2 and results[True][2] == 4  # each of the 2 layers runs again in backward
    assert torch.equal(results[True][0], results[False][0])
    for (name, _), a, b in zip(model.named_parameters(), results[True][1], results[False][1]):
        assert_close(a, b, rtol=1e-6, atol=1e-8, what=f"d {name} with checkpointing")


def _step_bytes(model, objective, seq_len) -> tuple[int, int]:
    """(bytes held after the forward, peak bytes during forward + backward), beyond what existed before."""
    from torch.distributed._tools.mem_tracker import MemTracker

    window = torch.randint(0, 256, (1, seq_len + 1), generator=torch.Generator().manual_seed(seq_len))
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        before = tracker.get_tracker_snapshot("current")[torch.device("cpu")]["Total"]
        parts = objective(model, window)
        held = tracker.get_tracker_snapshot("current")[torch.device("cpu")]["Total"]
        parts.total.backward()
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    model.zero_grad(set_to_none=True)
    return held - before, peak - before


@pytest.fixture
def kernels_not_run(monkeypatch):
    """Kernel launches become no-ops (integer arguments zeroed so every index stays valid). A Triton kernel
    allocates no torch memory, and on the triton path no allocation size depends on a tensor's values (no
    host syncs), so the torch allocations, which are all a GPU would hold, are measured without computing.
    test_memory_measurement_without_kernels_matches_the_interpreter checks that against real launches."""
    import triton.runtime.interpreter as interpreter

    def launch(self, *args, **kwargs):
        for a in args:
            if isinstance(a, torch.Tensor) and not a.is_floating_point():
                a.data.zero_()  # .data: no autograd version bump on tensors saved for backward

    monkeypatch.setattr(interpreter.GridExecutor, "__call__", launch)


def _growth_ratio(peaks):
    """(p3 - p2) / (p2 - p1) for lengths S, 2S, 4S: 2 when memory is linear in S, 4 when quadratic."""
    return (peaks[2] - peaks[1]) / (peaks[1] - peaks[0])


LENGTHS = (256, 512, 1024)


@pytest.mark.parametrize("distill_weight", [0.0, 1.0], ids=["data-targets", "self-distillation"])
def test_peak_memory_per_sequence_is_linear_in_length_on_the_triton_path(
    distill_weight, monkeypatch, tmp_path, no_dense_mask, kernels_not_run
):
    spec = parse_spec(ONE_LAYER)
    spec = dataclasses.replace(spec, diffusion=dataclasses.replace(spec.diffusion,
                                                                   loss=DiffusionLossSpec(1.0, distill_weight)))
    model = _model(spec, "triton", monkeypatch, tmp_path)
    peaks = [_step_bytes(model, Objective(spec, "tidar", S, "triton"), S)[1] for S in LENGTHS]
    assert 1.95 < _growth_ratio(peaks) < 2.05, peaks
    # the memory formula's per-row terms bound the measured growth from above, and not loosely
    rows = 2 * (LENGTHS[2] - LENGTHS[1])
    per_row = (peaks[2] - peaks[1]) / rows
    big, small = (
        estimate_training_memory(spec.model, S, 1, "tidar", "fp32", "triton", device_type="cpu",
                                 distill=spec.diffusion.loss.distill_weight > 0)
        for S in LENGTHS[2:0:-1]
    )
    formula = (big.activations + big.loss - small.activations - small.loss) / rows
    assert 0.6 * formula < per_row <= formula, (per_row, formula)


def test_the_reference_path_is_quadratic_in_length(monkeypatch, tmp_path):
    """The same measurement on the reference model (dense mask, saved score matrices): it can tell them apart."""
    spec = parse_spec(ONE_LAYER)
    model = _model(spec, "torch", monkeypatch, tmp_path)
    peaks = [_step_bytes(model, Objective(spec, "tidar", S, "torch"), S)[1] for S in LENGTHS]
    assert _growth_ratio(peaks) > 2.5, peaks  # linear: 2.00 +- 0.05 above


@pytest.mark.slow
def test_memory_measurement_without_kernels_matches_the_interpreter(monkeypatch, tmp_path, request):
    """Held activations are identical and the peak within 3% with real kernel launches (interpreter host
    copies of kernel arguments excluded: a GPU has none)."""
    import triton.runtime.interpreter as interpreter
    from torch.utils._python_dispatch import _disable_current_modes

    spec = parse_spec(ONE_LAYER)
    model = _model(spec, "triton", monkeypatch, tmp_path)
    launch = interpreter.GridExecutor.__call__

    def untracked_launch(*args, **kwargs):
        with _disable_current_modes():
            return launch(*args, **kwargs)

    monkeypatch.setattr(interpreter.GridExecutor, "__call__", untracked_launch)
    # a first step builds the generated model's per-weight-version caches (concatenated q|k weights, ...),
    # so both measurements below start from the same held state
    _step_bytes(model, Objective(spec, "tidar", 16, "triton"), 16)
    real = _step_bytes(model, Objective(spec, "tidar", 16, "triton"), 16)
    request.getfixturevalue("kernels_not_run")
    measured = _step_bytes(model, Objective(spec, "tidar", 16, "triton"), 16)
    assert measured[0] == real[0], (measured, real)
    assert measured[1] == pytest.approx(real[1], rel=0.03), (measured, real)
