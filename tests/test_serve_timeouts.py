"""Slow clients cannot hold `zdiff serve`: deadlines for a request's head and body, idle keep-alive, the
head size, a SIGTERM drain that closes uploads still in progress, and a clean stop on a second signal.
Every client is a raw socket on 127.0.0.1 with bounded waits."""

import json
import signal
import socket
import threading
import time
import urllib.request

import pytest

from conftest import REPO
from generation_helpers import tiny_vocab_model
from zdiff.generation.engine import Engine
from zdiff.serve.launcher import HOST, ServerProcess, child_env
from zdiff.tokenize import ByteTokenizer

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from serve_helpers import health, live  # noqa: E402

from zdiff.serve.app import ServedModel, build_app  # noqa: E402
from zdiff.serve.protocol import guarded_protocol  # noqa: E402
from zdiff.serve.schemas import SamplerDefaults  # noqa: E402

HEADER_S, BODY_S, KEEP_ALIVE_S = 1.0, 1.5, 1.0
SLACK = 2.0  # a loaded CI machine
HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"


def _app():
    model, spec = tiny_vocab_model(seed=1)
    engine = Engine(model, diffusion=spec.diffusion, max_slots=2, max_len=32, proposals=3)
    return build_app(ServedModel("tiny", ByteTokenizer(), SamplerDefaults(), (), 32), engine)


def _config(body_s=BODY_S):
    return dict(http=guarded_protocol(HEADER_S, body_s), timeout_keep_alive=KEEP_ALIVE_S,
                h11_max_incomplete_event_size=4096)


@pytest.fixture(scope="module")
def url():
    with live(_app(), **_config()) as (address, _):
        yield address


def _connect(url):
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.settimeout(0.1)
    return sock


def _dribble_until_closed(sock, first: bytes, dribble: bytes, every: float, limit: float) -> float:
    """Send `first`, then one byte of `dribble` every `every` s; seconds until the server closed (or limit)."""
    start = time.monotonic()
    sock.sendall(first)
    data = iter(dribble)
    while time.monotonic() - start < limit:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        except ConnectionError:
            return time.monotonic() - start
        byte = next(data, None)
        try:
            if byte is not None:
                sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionError):
            return time.monotonic() - start
        time.sleep(every)
    return float("inf")


def test_a_dribbled_head_is_cut_off(url):
    with _connect(url) as sock:
        took = _dribble_until_closed(sock, b"P", b"OST /v1/completions HTTP/1.1\r\nX-Slow: " + b"a" * 500, 0.2,
                                     HEADER_S + SLACK + 3)
    assert HEADER_S * 0.9 <= took <= HEADER_S + SLACK


def test_a_silent_connection_is_cut_off(url):
    with _connect(url) as sock:
        took = _dribble_until_closed(sock, b"", b"", 0.1, HEADER_S + SLACK + 3)
    assert took <= HEADER_S + SLACK


def test_a_dribbled_body_is_cut_off(url):
    with _connect(url) as sock:
        took = _dribble_until_closed(sock, HEAD, b'{"model": "tiny", "prompt": [1]' + b" " * 300, 0.2,
                                     BODY_S + SLACK + 3)
    assert BODY_S * 0.9 <= took <= BODY_S + SLACK


def test_an_idle_keep_alive_connection_is_closed(url):
    with _connect(url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        assert b"200 OK" in sock.recv(4096)
        took = _dribble_until_closed(sock, b"", b"", 0.1, KEEP_ALIVE_S + SLACK + 3)
    assert took <= KEEP_ALIVE_S + SLACK


def test_a_huge_head_is_refused(url):
    with _connect(url) as sock:
        sock.settimeout(10)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 8000 + b"\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 431") and b"request head larger than 4096 bytes" in reply, reply
    assert health(url)[0] == 200  # and the server is still fine


def test_shutdown_closes_uploads_in_progress_at_once():
    with live(_app(), **_config(body_s=60.0)) as (address, server):
        sock = _connect(address)
        sock.sendall(HEAD + b'{"model"')
        time.sleep(0.3)
        server.should_exit = True  # what SIGTERM does
        took = _dribble_until_closed(sock, b"", b" " * 100, 0.2, 20)
        sock.close()
    assert took <= SLACK + 1, took  # not the 60 s body deadline


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from zdiff.checkpoint.store import save_checkpoint
    from zdiff.runtime import build_model
    from zdiff.spec import load_spec

    spec = load_spec("zaya1-tiny")
    directory = tmp_path_factory.mktemp("timeouts") / "ck"
    save_checkpoint(build_model(spec.model, seed=3), spec, directory)
    return directory


def _streaming_server(checkpoint, tmp_path, drain: str):
    """A live server with one long stream under way; (server, the stream's lines so far, its thread)."""
    server = ServerProcess(checkpoint, "--max-len", "4096", "--served-model-name", "tiny", "--device", "cpu",
                           "--drain-timeout", drain, log=tmp_path / "serve.log", env=child_env(REPO)).start()
    # greedy on this checkpoint repeats one byte without ever sampling EOS: a stream that would run for minutes
    body = json.dumps({"model": "tiny", "prompt": "hello", "max_tokens": 4000, "stream": True, "temperature": 0,
                       "return_token_ids": True}).encode()
    received = []

    def stream():
        request = urllib.request.Request(f"{server.base_url}/completions", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                for line in response:
                    received.append(line)
        except Exception:  # the server goes away mid-stream: a failure the assertions below report
            pass

    client = threading.Thread(target=stream, daemon=True)
    client.start()
    deadline = time.monotonic() + 60
    while len(received) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert received, server.log()[-2000:]
    return server, received, client


def _stopped_cleanly(server, received, client, status):
    client.join(10)
    log = server.log()
    assert status == 0, log[-3000:]
    assert "Traceback" not in log and "Aborted" not in log, log[-3000:]
    assert any(b'"finish_reason":"cancelled"' in line.replace(b" ", b"") for line in received), received[-3:]
    assert received[-1].strip() in (b"", b"data: [DONE]") and any(b"[DONE]" in line for line in received)


def test_a_second_signal_stops_a_streaming_server_cleanly(tiny_checkpoint, tmp_path):
    server, received, client = _streaming_server(tiny_checkpoint, tmp_path, "120")
    server.process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert server.process.poll() is None  # the first signal drains (a 4000-token answer takes longer)
    server.process.send_signal(signal.SIGINT)
    _stopped_cleanly(server, received, client, server.process.wait(30))


def test_sigterm_drain_is_bounded(tiny_checkpoint, tmp_path):
    server, received, client = _streaming_server(tiny_checkpoint, tmp_path, "1")
    start = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    status = server.process.wait(30)
    assert time.monotonic() - start < 15  # the drain, a step, the shutdown: not the 4000-token answer
    _stopped_cleanly(server, received, client, status)
