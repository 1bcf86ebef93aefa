"""`zdiff serve` in a child process on a free localhost port, for tests and benchmarks.

    with ServerProcess(checkpoint, "--max-slots", "4", log=Path("serve.log")) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")

The child's output goes to a log file (a pipe nobody reads would fill and block the server).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(
        self,
        checkpoint: str | Path,
        *flags: str,
        log: Path,
        env: dict[str, str] | None = None,
        startup_timeout: float = 180.0,
    ):
        self.checkpoint, self.flags, self.log_path = str(checkpoint), [str(f) for f in flags], Path(log)
        self.env, self.startup_timeout = env, startup_timeout
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def start(self) -> ServerProcess:
        for _ in range(3):  # another process may take the free port between our probe and the bind
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "zdiff", "serve", self.checkpoint, "--port", str(self.port), *self.flags],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                )
            if self._wait_healthy():
                return self
            if self.process.poll() is None:
                self.process.kill()
                raise RuntimeError(
                    f"zdiff serve did not become healthy in {self.startup_timeout:.0f} s:\n{self.log()[-3000:]}"
                )
        raise RuntimeError(f"zdiff serve exited at startup (status {self.process.returncode}):\n{self.log()[-3000:]}")

    def _wait_healthy(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        return False

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (the server drains in-flight requests) and wait; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(
                f"zdiff serve did not exit {timeout:.0f} s after SIGTERM:\n{self.log()[-3000:]}"
            ) from None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.terminate()


def child_env(repo: Path | None = None) -> dict[str, str]:
    """The environment with `repo` first on PYTHONPATH (a source checkout wins over an installed zdiff)."""
    env = dict(os.environ)
    if repo is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(repo), *filter(None, [env.get("PYTHONPATH")])])
    return env
