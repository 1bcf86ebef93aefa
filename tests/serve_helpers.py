"""An in-process `zdiff serve` app on 127.0.0.1 (uvicorn in a thread) and bounded urllib clients."""

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request

import uvicorn

from zdiff.serve.launcher import HOST, free_port

TIMEOUT = 60


@contextlib.contextmanager
def live(app, **config):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_level="error", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the in-process server did not start"
    try:
        yield f"http://{HOST}:{port}", server
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)


def post(url, body, path="/v1/completions"):
    request = urllib.request.Request(f"{url}{path}", body if isinstance(body, bytes) else json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def health(url):
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
