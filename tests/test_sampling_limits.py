"""Extreme but valid sampling values give the right answer (temperature -> 0+ and top_p -> 0+ are greedy,
token for token, on the engine and the reference loop); out-of-range ones are refused by field name
before they reach a tensor."""

import pytest

from generation_helpers import tiny_vocab_model
from zdiff import generate
from zdiff.errors import ZdiffError
from zdiff.generation import SamplingParams
from zdiff.generation.engine import Engine, RequestParams

PROMPTS = [[1, 2, 3, 4, 5], [6], [2, 2, 4, 1, 0, 3]]
NEW = 12
NEAR_ZERO = [  # (temperature, top_p): each the greedy limit
    (1e-40, 1.0), (1e-300, 1.0), (5e-324, 1.0), (1e-12, 1.0), (1.0, 1e-300), (1.0, 5e-324), (1e-300, 1e-300),
]


@pytest.fixture(scope="module")
def tiny():
    return tiny_vocab_model(seed=1)


def _engine(model, spec, **kw):
    return Engine(model, diffusion=spec.diffusion, max_slots=2, max_len=32, proposals=3, **kw)


def _engine_tokens(model, spec, mode, **params):
    engine = _engine(model, spec)
    ids = [engine.add(p, RequestParams(max_new_tokens=NEW, mode=mode, seed=5 + i, **params))
           for i, p in enumerate(PROMPTS)]
    results = engine.run()
    return [results[i].tokens for i in ids]


@pytest.mark.parametrize("mode", ["ar", "tidar"])
def test_near_zero_temperature_and_top_p_are_greedy_on_the_engine(tiny, mode):
    model, spec = tiny
    greedy = _engine_tokens(model, spec, mode, sampler="greedy")
    assert any(len(set(t)) > 1 for t in greedy)  # not one repeated id: a real sequence to compare against
    for temperature, top_p in NEAR_ZERO:
        for sampler in ("lossless", "logit_mix"):
            params = dict(sampler=sampler, temperature=temperature, top_p=top_p, mix_weight=1.0)
            assert _engine_tokens(model, spec, mode, **params) == greedy, (sampler, temperature, top_p)


@pytest.mark.parametrize("mode", ["ar", "tidar"])
def test_near_zero_temperature_and_top_p_are_greedy_on_the_reference_loop(tiny, mode):
    model, spec = tiny
    greedy = generate(model, PROMPTS, SamplingParams(sampler="greedy"), diffusion=spec.diffusion, mode=mode,
                      max_new_tokens=NEW, loop="reference").tokens
    for temperature, top_p in NEAR_ZERO[:2] + NEAR_ZERO[4:5]:
        sampled = generate(model, PROMPTS, SamplingParams(temperature=temperature, top_p=top_p),
                           diffusion=spec.diffusion, mode=mode, max_new_tokens=NEW, seed=3, loop="reference")
        assert sampled.tokens == greedy, (temperature, top_p)


def test_top_k_past_the_vocabulary_is_top_k_off(tiny):
    model, spec = tiny
    plain = _engine_tokens(model, spec, "tidar", temperature=0.8)
    for top_k in (8, 2**63, 2**70):
        assert _engine_tokens(model, spec, "tidar", temperature=0.8, top_k=top_k) == plain


BAD_REQUESTS = [
    (dict(temperature=1e300), "temperature"),
    (dict(temperature=3.5e38), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=10**400), "temperature"),
    (dict(temperature="1"), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2.0), "top_k"),
    (dict(top_k=True), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(mix_weight=float("nan")), "mix_weight"),
    (dict(seed=2**63), "seed"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(max_new_tokens=2.0), "max_new_tokens"),
    (dict(sampler="beam"), "sampler"),
    (dict(stop_tokens=(2**63,)), "stop_tokens"),
]


@pytest.mark.parametrize("fields, field", BAD_REQUESTS)
def test_engine_refuses_bad_request_fields_by_name(tiny, fields, field):
    model, spec = tiny
    engine = _engine(model, spec)
    with pytest.raises(ZdiffError, match=f"^{field}:"):
        engine.add([1, 2], RequestParams(**(dict(max_new_tokens=4) | fields)))
    engine.add([1, 2], RequestParams(max_new_tokens=4))  # the refusal left nothing half-admitted
    assert len(engine.run()) == 1


@pytest.mark.parametrize("prompt, fragment", [
    (None, "prompt: must be a list"), (5, "prompt: must be a list"), ("abc", "prompt: must be a list"),
    ([], "prompt: needs at least one"), ([1, 8], r"prompt: token ids must be integers in \[0, 8\)"),
    ([1, -1], "prompt: token ids"), ([1.0], "prompt: token ids"), ([2**64], "prompt: token ids"),
])
def test_engine_refuses_bad_prompts(tiny, prompt, fragment):
    model, spec = tiny
    with pytest.raises(ZdiffError, match=fragment):
        _engine(model, spec).add(prompt, RequestParams(max_new_tokens=4))


BAD_LOOP_CALLS = [
    (dict(params=SamplingParams(temperature=float("nan"))), "temperature"),
    (dict(params=SamplingParams(temperature=1e300)), "temperature"),
    (dict(params=SamplingParams(top_p=0.0)), "top_p"),
    (dict(params=SamplingParams(top_k=-3)), "top_k"),
    (dict(prompts=[[1, 99]]), r"prompts\[0\]: token ids must be integers in \[0, 8\)"),
    (dict(prompts=[[1], []]), r"prompts\[1\]: needs at least one token"),
    (dict(prompts=[]), "prompts: needs at least one prompt"),
    (dict(prompts=None), "prompts: must be a list"),
    (dict(prompts=7), "prompts: must be a list"),
    (dict(max_new_tokens=1.5), "max_new_tokens"),
]


@pytest.mark.parametrize("loop", ["reference", "engine"])
@pytest.mark.parametrize("call, fragment", BAD_LOOP_CALLS)
def test_generate_refuses_bad_calls_by_name(tiny, loop, call, fragment):
    model, spec = tiny
    kwargs = dict(prompts=[[1, 2]], params=SamplingParams(), max_new_tokens=4) | call
    with pytest.raises(ZdiffError, match=fragment):
        generate(model, kwargs.pop("prompts"), kwargs.pop("params"), diffusion=spec.diffusion, loop=loop, **kwargs)


@pytest.mark.parametrize("max_slots, fragment", [(0, "max_slots must be an integer >= 1, got 0"),
                                                 (2.5, "max_slots must be an integer >= 1, got 2.5")])
def test_generate_refuses_bad_slot_counts(tiny, max_slots, fragment):
    model, spec = tiny
    with pytest.raises(ZdiffError, match=fragment):
        generate(model, [[1, 2]], SamplingParams(), diffusion=spec.diffusion, max_new_tokens=2, max_slots=max_slots)

