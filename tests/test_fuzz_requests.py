"""Fuzz (hypothesis, derandomized, bounded) of what clients send: random request bodies against a live
in-process server on 127.0.0.1, and random parameter sets through the engine API. A body is answered
200 or a 4xx error object naming what is wrong, never a 500, and the server stays healthy; an engine
call either runs (tokens within the vocabulary) or raises one ZdiffError, and the engine stays usable.
More examples: ZDIFF_FUZZ_SCALE=10 pytest tests/test_fuzz_requests.py."""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generation_helpers import tiny_vocab_model
from zdiff.errors import ZdiffError
from zdiff.generation.engine import Engine, RequestParams
from zdiff.tokenize import ByteTokenizer

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from serve_helpers import health, live, post  # noqa: E402

from zdiff.serve.app import ServedModel, build_app  # noqa: E402
from zdiff.serve.schemas import SamplerDefaults  # noqa: E402

SCALE = float(os.environ.get("ZDIFF_FUZZ_SCALE", "1"))
VOCAB = 8


def _settings(examples: int):
    return settings(max_examples=max(1, int(examples * SCALE)), derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tiny():
    return tiny_vocab_model(seed=1)


@pytest.fixture(scope="module")
def url(tiny):
    model, spec = tiny
    engine = Engine(model, diffusion=spec.diffusion, max_slots=2, max_len=32, proposals=3)
    with live(build_app(ServedModel("tiny", ByteTokenizer(), SamplerDefaults(), (), 32), engine)) as (address, _):
        yield address


# numbers at and past every edge that matters: fp32 / int64 overflow, zero, subnormal, huge ints
EDGE_FLOATS = st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1e-40, 1e-20, 0.5, 1.0, 1.5, 2.0, 1e4, 1e5, 3.5e38,
                               1e300, -1.0])
EDGE_INTS = st.sampled_from([0, 1, 2, 7, 8, 9, -1, 2**31, 2**63 - 1, 2**63, 2**64, 2**70, -(2**63)])
ANY_VALUE = st.one_of(st.none(), st.booleans(), EDGE_INTS, EDGE_FLOATS, st.text(max_size=12),
                      st.lists(st.integers(-3, 12), max_size=4), st.dictionaries(st.text(max_size=3), st.none(),
                                                                                   max_size=2))
FIELDS = {
    "prompt": st.one_of(st.lists(st.integers(0, 9), max_size=6), st.text(max_size=8), ANY_VALUE),
    "max_tokens": st.one_of(st.integers(1, 4), ANY_VALUE),
    "temperature": st.one_of(EDGE_FLOATS, ANY_VALUE),
    "top_p": st.one_of(EDGE_FLOATS, ANY_VALUE),
    "top_k": st.one_of(EDGE_INTS, ANY_VALUE),
    "seed": st.one_of(EDGE_INTS, ANY_VALUE),
    "mix_weight": st.one_of(EDGE_FLOATS, ANY_VALUE),
    "sampler": st.one_of(st.sampled_from(["lossless", "logit_mix", "greedy"]), ANY_VALUE),
    "mode": st.one_of(st.sampled_from(["ar", "tidar"]), ANY_VALUE),
    "stop": st.one_of(st.text(max_size=4), st.lists(st.text(max_size=300), max_size=20), ANY_VALUE),
    "stream": st.one_of(st.booleans(), ANY_VALUE),
    "n": st.one_of(st.just(1), ANY_VALUE),
}
BASE = st.fixed_dictionaries({"model": st.just("tiny"), "prompt": st.lists(st.integers(0, 6), min_size=1, max_size=4),
                              "max_tokens": st.integers(1, 4)})
BODIES = st.tuples(BASE, st.fixed_dictionaries({}, optional=FIELDS)).map(lambda parts: parts[0] | parts[1])


@_settings(60)
@given(body=BODIES)
def test_fuzzed_request_bodies_never_take_the_server_down(url, body):
    status, text = post(url, body)
    assert status in (200, 400, 404, 422), (status, text[:500])
    if status != 200:
        error = json.loads(text)["error"]
        assert error["message"] and "Traceback" not in error["message"], error
        if error.get("param"):
            assert error["message"].startswith(error["param"].split(".")[0]) or "body" in error["message"], error
    elif not body.get("stream"):
        assert json.loads(text)["choices"][0]["finish_reason"] in ("stop", "length")
    assert health(url)[0] == 200


PARAMS = {
    "max_new_tokens": st.one_of(st.integers(1, 4), EDGE_INTS, EDGE_FLOATS),
    "mode": st.one_of(st.sampled_from(["ar", "tidar"]), st.text(max_size=3)),
    "sampler": st.one_of(st.sampled_from(["lossless", "logit_mix", "greedy"]), st.none()),
    "temperature": st.one_of(EDGE_FLOATS, EDGE_INTS, st.just(float("nan")), st.just(float("inf"))),
    "top_k": st.one_of(EDGE_INTS, EDGE_FLOATS, st.booleans()),
    "top_p": st.one_of(EDGE_FLOATS, st.just(float("nan")), EDGE_INTS),
    "mix_weight": st.one_of(EDGE_FLOATS, st.just(float("nan"))),
    "seed": st.one_of(EDGE_INTS, EDGE_FLOATS),
    "stop_tokens": st.one_of(st.tuples(), st.tuples(EDGE_INTS), st.lists(st.integers(0, 9), max_size=20).map(tuple)),
}
PROMPTS = st.one_of(st.lists(st.integers(0, 6), min_size=1, max_size=5), st.lists(EDGE_INTS, max_size=3),
                    st.none(), EDGE_INTS, st.text(max_size=3))


@_settings(80)
@given(prompt=PROMPTS, fields=st.fixed_dictionaries({}, optional=PARAMS))
def test_fuzzed_engine_parameters_run_or_raise_one_zdiff_error(tiny, prompt, fields):
    model, spec = tiny
    engine = Engine(model, diffusion=spec.diffusion, max_slots=2, max_len=16, proposals=2)
    try:
        rid = engine.add(prompt, RequestParams(**fields))
    except ZdiffError as err:
        assert "\n" not in str(err) and str(err).split(":")[0] in (*PARAMS, "prompt", "params"), str(err)
    else:
        result = engine.run()[rid]
        assert result.finish_reason in ("stop", "length") and all(0 <= t < VOCAB - 1 for t in result.tokens)
    ok = engine.add([1, 2], RequestParams(max_new_tokens=3, sampler="greedy"))
    assert len(engine.run()[ok].tokens) == 3
