"""One sampler rule (zdiff.sampler): the spec, the engine, the reference loop, the CLI and the server refuse
the same values with the same reason, naming the field and the value, because they all ask
`sampling_problem`; temperature 0 means greedy on the CLI and the server alike."""

from __future__ import annotations

import dataclasses

import pytest

from generation_helpers import tiny_vocab_model
from zdiff import generate
from zdiff.errors import SpecError, ZdiffError
from zdiff.generation.engine import Engine, RequestParams
from zdiff.sampler import (
    SAMPLERS,
    SamplerConflict,
    SamplingParams,
    check_sampling,
    sampler_at_temperature,
    sampling_problem,
)
from zdiff.serve.schemas import FieldError, SamplerDefaults, SamplingRequest, engine_params
from zdiff.spec.schema import SamplerSpec
from zdiff.spec.validate import validate

GOOD = dict(sampler="logit_mix", temperature=0.7, top_k=5, top_p=0.9, mix_weight=0.5)
BAD = [  # (field, value, reason): one per rule
    ("sampler", "beam", "must be one of lossless, logit_mix, greedy"),
    ("temperature", float("nan"), "must be a finite number in (0, 10000] (use sampler greedy for argmax)"),
    ("temperature", 2e4, "must be a finite number in (0, 10000] (use sampler greedy for argmax)"),
    ("top_k", -1, "must be an integer >= 0 (0 = off)"),
    ("top_k", 2.0, "must be an integer >= 0 (0 = off)"),
    ("top_p", 0.0, "must be in (0, 1]"),
    ("top_p", 1.5, "must be in (0, 1]"),
    ("mix_weight", 1.5, "must be in [0, 1]"),
]


@pytest.fixture(scope="module")
def tiny():
    return tiny_vocab_model(seed=1)


def test_the_rule_accepts_each_sampler_and_greedy_at_temperature_zero():
    for sampler in SAMPLERS:
        assert sampling_problem(**(GOOD | dict(sampler=sampler))) is None
    assert sampling_problem(**(GOOD | dict(sampler="greedy", temperature=0))) is None
    assert sampling_problem(**(GOOD | dict(temperature=0))) == (
        "temperature", 0, "must be a finite number in (0, 10000] (use sampler greedy for argmax)")


@pytest.mark.parametrize("field, value, reason", BAD, ids=[f"{b[0]}={b[1]!r}" for b in BAD])
def test_engine_and_reference_loop_refuse_with_the_rule_s_reason(tiny, field, value, reason):
    assert sampling_problem(**(GOOD | {field: value})) == (field, value, reason)
    message = f"{field}: {reason}, got {value!r}"
    with pytest.raises(ZdiffError) as checked:
        check_sampling(**(GOOD | {field: value}))
    assert str(checked.value) == message

    model, spec = tiny
    engine = Engine(model, diffusion=spec.diffusion, max_slots=1, max_len=16)
    with pytest.raises(ZdiffError) as refused:
        engine.add([1, 2], RequestParams(max_new_tokens=2, **(GOOD | {field: value})))
    assert str(refused.value) == message

    params = dict(GOOD | {field: value})
    params = SamplingParams(**params)
    with pytest.raises(ZdiffError) as looped:
        generate(model, [[1, 2]], params, loop="reference", diffusion=spec.diffusion, max_new_tokens=2)
    assert str(looped.value) == message


@pytest.mark.parametrize("field, value, reason", [b for b in BAD if b[0] in ("top_k", "top_p", "mix_weight")])
def test_the_spec_refuses_with_the_same_reason(tiny, field, value, reason):
    _, spec = tiny
    sampler = SamplerSpec(kind="logit_mix", mix_weight=0.5, temperature=0.7, top_k=5, top_p=0.9)
    with pytest.raises(SpecError) as refused:
        validate(dataclasses.replace(spec, sampler=dataclasses.replace(sampler, **{field: value})))
    assert refused.value.path == f"sampler.{field}" and refused.value.reason == reason
    assert str(refused.value).startswith(f"sampler.{field}: {reason}, got {value!r}")


def test_temperature_zero_means_greedy_on_the_cli_and_the_server():
    assert sampler_at_temperature(None, 0) == "greedy" and sampler_at_temperature("greedy", 0.0) == "greedy"
    assert sampler_at_temperature(None, 0.5) is None and sampler_at_temperature("lossless", 0.5) == "lossless"
    with pytest.raises(SamplerConflict, match="sampler lossless needs a positive temperature"):
        sampler_at_temperature("lossless", 0)

    defaults = SamplerDefaults()
    assert engine_params(SamplingRequest(model="m", temperature=0), defaults, 4, ()).sampler == "greedy"
    with pytest.raises(FieldError) as conflict:
        engine_params(SamplingRequest(model="m", temperature=0, sampler="logit_mix"), defaults, 4, ())
    assert conflict.value.param == "temperature" and "sampler logit_mix needs a positive temperature" in str(
        conflict.value)
