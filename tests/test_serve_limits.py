"""Request fields the server range-checks before anything reaches a tensor (one 400 naming the field, and
the server keeps serving), extreme but valid values that equal greedy, and `zdiff serve` flags refused
in one line before any loading. In-process server on 127.0.0.1, bounded clients."""

import json
import socket

import pytest

from generation_helpers import tiny_vocab_model
from zdiff.generation.engine import Engine
from zdiff.serve.launcher import HOST
from zdiff.tokenize import ByteTokenizer

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from serve_helpers import health, live, post  # noqa: E402

from zdiff.serve.app import ServedModel, build_app  # noqa: E402
from zdiff.serve.schemas import SamplerDefaults  # noqa: E402

BODY = {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 8}


@pytest.fixture(scope="module")
def url():
    model, spec = tiny_vocab_model(seed=1)
    engine = Engine(model, diffusion=spec.diffusion, max_slots=2, max_len=32, proposals=3)
    served = ServedModel("tiny", ByteTokenizer(), SamplerDefaults(), (), 32)
    with live(build_app(served, engine)) as (address, _):
        yield address


def _ids(text):
    return json.loads(text)["choices"][0]["text"]


REFUSED = [
    ({"temperature": 1e300}, "temperature"),
    ({"temperature": 3.5e38}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"seed": 2**63}, "seed"),
    ({"seed": 2**70}, "seed"),
    ({"mix_weight": 2}, "mix_weight"),
    ({"stop": ["x"] * 17}, "stop"),
    ({"stop": "y" * 257}, "stop"),
    ({"prompt": "caf\ud800"}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": [1, 99]}, "prompt"),
    ({"max_tokens": 2**63}, "max_tokens"),
]


@pytest.mark.parametrize("fields, param", REFUSED)
def test_out_of_range_fields_are_a_400_naming_the_field(url, fields, param):
    status, text = post(url, BODY | fields)
    assert status == 400, text
    error = json.loads(text)["error"]
    assert error["param"] == param and error["message"].startswith(f"{param}:"), error
    assert health(url)[0] == 200


@pytest.mark.parametrize("raw, fragment", [
    (b"[1, 2]", "the request body must be a JSON object, got a JSON array"),
    (b'"hi"', "must be a JSON object, got a JSON string"),
    (b'{"model": "tiny", "prompt": [1], "temperature": NaN}', "temperature"),
    (b'{"model": "tiny", "prompt": [1], "top_p": Infinity}', "top_p"),
])
def test_odd_bodies_are_a_clear_400(url, raw, fragment):
    status, text = post(url, raw)
    assert status == 400 and fragment in json.loads(text)["error"]["message"], text


def test_near_zero_temperature_and_top_p_answer_greedy(url):
    status, greedy = post(url, BODY | {"temperature": 0})
    assert status == 200
    for fields in ({"temperature": 1e-40}, {"temperature": 1e-300}, {"top_p": 1e-300, "seed": 4}):
        status, text = post(url, BODY | fields)
        assert status == 200 and _ids(text) == _ids(greedy), fields


def test_top_k_past_the_vocabulary_is_top_k_off(url):
    status, plain = post(url, BODY | {"seed": 11, "temperature": 0.9})
    for top_k in (2**63, 2**70):
        status, text = post(url, BODY | {"seed": 11, "temperature": 0.9, "top_k": top_k})
        assert status == 200 and _ids(text) == _ids(plain), top_k


@pytest.fixture
def cli(capsys):
    from zdiff.cli import main

    def run(*args):
        status = main(["serve", *map(str, args)])
        return status, capsys.readouterr().err
    return run


def test_serve_refuses_triton_where_generate_does(cli, tmp_path, monkeypatch):
    for value in ("off", "false", "2", "0"):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        status, err = cli(tmp_path, "--device", "cpu", "--backend", "triton")
        assert status == 2 and f"TRITON_INTERPRET={value!r} leaves it off" in err and err.count("\n") == 1, err


def test_serve_refuses_an_empty_api_key(cli, tmp_path):
    status, err = cli(tmp_path, "--device", "cpu", "--api-key", "")
    assert status == 2 and "--api-key is empty" in err and err.count("\n") == 1, err


def test_serve_on_a_busy_port_is_one_line(cli, tmp_path):
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, err = cli(tmp_path, "--device", "cpu", "--port", port)
    assert status == 2 and f"--port {port}: cannot listen there" in err and err.count("\n") == 1, err
