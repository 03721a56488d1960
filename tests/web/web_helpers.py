"""What the page's tests share (plain module, not conftest: every test folder has a conftest):
paths, the role's defaults, a raw streaming client, a Prometheus counter reader, screenshots."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "collections/ansible_collections/ampere/llm/roles/web/files/web"
ROLE = ROOT / "collections/ansible_collections/ampere/llm/roles/web"
SCREENSHOTS = ROOT / "artifacts/screenshots"
NGINX = shutil.which("nginx", path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", "")) or "/usr/sbin/nginx"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def role_defaults() -> dict:
    return yaml.safe_load((ROLE / "defaults/main.yml").read_text())


# One llama.cpp thread per test backend: on a shared, oversubscribed CI machine a multi-threaded
# decode waits on its slowest thread at every barrier and can slow down many times over.
ONE_THREAD = ("--threads", "1")

LONG_PROMPT = "Count from 1 to 500, separated by commas."  # SmolLM2 at temperature 0 keeps going


def generate_body(content: str = LONG_PROMPT, max_tokens: int = 64, **extra) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": content}],
                       "max_tokens": max_tokens, "temperature": 0, **extra}).encode()


class RawStream:
    """POST /generate over a plain socket, so the test sees each piece exactly as it arrives."""

    def __init__(self, url: str, body: bytes, timeout: float = 60) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.sendall(b"POST /generate HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        self.received = b""

    def pieces(self):
        """Yield each recv() as it comes, until the server closes."""
        while chunk := self.sock.recv(65536):
            self.received += chunk
            yield chunk

    def read_until(self, marker: bytes) -> None:
        for _ in self.pieces():
            if marker in self.received:
                return
        raise AssertionError(f"stream ended without {marker!r}:\n{self.received[-2000:]!r}")

    def close(self) -> None:
        self.sock.close()


def counter(metrics_text: str, name: str, **labels) -> float:
    """The value of one Prometheus sample (0 when it has not appeared yet)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in metrics_text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name:
            have = ",".join(sorted(p for p in (m.group(2) or "").split(",") if p))
            if have == want:
                return float(m.group(3))
    return 0.0


def csp_problems(pg) -> list[str]:
    """Every CSP violation the page saw, from the DOM event and the console alike."""
    return pg.evaluate("window.__csp") + [m for m in pg.console_messages_seen
                                          if "Content Security Policy" in m or "Refused to" in m]


def screenshot(pg, name: str) -> None:
    """Desktop (light and dark) and phone-width screenshots under artifacts/screenshots/ (kept by CI)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    size = pg.viewport_size
    pg.screenshot(path=str(SCREENSHOTS / f"{name}-desktop.png"))
    pg.set_viewport_size({"width": 390, "height": 780})
    pg.screenshot(path=str(SCREENSHOTS / f"{name}-phone.png"))
    pg.set_viewport_size(size)
    pg.emulate_media(color_scheme="dark")
    pg.screenshot(path=str(SCREENSHOTS / f"{name}-desktop-dark.png"))
    pg.emulate_media(color_scheme="light")
