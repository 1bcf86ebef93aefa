"""A failing engine step over HTTP: the requests in flight get an OpenAI error object (non-streamed) or an
error chunk (streamed), the server goes on serving, and an engine thread that dies shows in /health and
stops the server. In-process uvicorn on 127.0.0.1, bounded timeouts."""

import json

import pytest

from generation_helpers import FailingForward, tiny_vocab_model
from zdiff.generation.engine import Engine
from zdiff.tokenize import ByteTokenizer

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from serve_helpers import health as _health  # noqa: E402
from serve_helpers import live as _live  # noqa: E402
from serve_helpers import post as _post  # noqa: E402

from zdiff.serve.app import ServedModel, build_app  # noqa: E402
from zdiff.serve.schemas import SamplerDefaults  # noqa: E402


def _app(engine, **kw):
    served = ServedModel("tiny", ByteTokenizer(), SamplerDefaults(sampler="greedy"), (), 32)
    return build_app(served, engine, **kw)


BODY = {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 8, "temperature": 0}


def test_a_failing_step_is_an_error_response_and_the_server_goes_on():
    model, spec = tiny_vocab_model(seed=1)
    failure = FailingForward(model)
    engine = Engine(model, diffusion=spec.diffusion, max_slots=2, max_len=32, proposals=3)
    with _live(_app(engine)) as (url, _):
        status, good = _post(url, BODY)
        assert status == 200, good
        failure.armed = True
        status, text = _post(url, BODY)
        assert status == 500 and "injected failure" in json.loads(text)["error"]["message"]
        status, text = _post(url, BODY | {"stream": True})
        assert status == 200
        chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        assert "injected failure" in chunks[-1]["error"]["message"] and "data: [DONE]" not in text
        failure.armed = False
        assert _health(url)[0] == 200
        status, again = _post(url, BODY)
        assert status == 200 and json.loads(again)["choices"][0]["text"] == json.loads(good)["choices"][0]["text"]


def test_a_dead_engine_thread_shows_in_health_and_stops_the_server():
    model, spec = tiny_vocab_model(seed=1)
    engine = Engine(model, diffusion=spec.diffusion, max_slots=2, max_len=32, proposals=3)
    died = []
    app = _app(engine, on_engine_death=died.append)

    def broken_step():
        raise SystemError("the step cannot recover")  # not a StepFailed: the thread ends for good

    engine.step = broken_step
    with _live(app) as (url, _):
        status, text = _post(url, BODY)
        assert status == 500 and "cannot recover" in text
        status, text = _health(url)
        assert status == 503 and "cannot recover" in text
        assert died and "cannot recover" in died[0]
        status, text = _post(url, BODY)
        assert status == 503
