"""Steady, bounded load on the pool's balancer: N client threads stream /generate until a request
count or a deadline is reached, and every request's fate is recorded with its start and end time,
so a test can count by phase (before/after a failure, during a roll-out) what was sent, succeeded
and failed. Loopback only; every read has a timeout, so a hung stream is recorded as `hang`.

Each client thread connects from a loopback address of its own (127.0.1.N): the nodes tell clients
apart by the address HAProxy forwards, as they would tell users apart behind a real balancer, so
one client's requests never count against another's rate limit. HTTPS URLs are verified against
the pool's certificate (`cafile`)."""
from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sse import iter_reads  # scripts/sse.py (tests/conftest.py puts scripts/ on sys.path)

PROMPTS = ["Name three colours.", "What is a CPU?", "Say hello in French.", "Count to five.",
           "What is the capital of Italy?", "Name a fruit that is yellow."]


@dataclass
class Result:
    start: float
    end: float = 0.0
    status: int = 0                 # HTTP status; 0 when no response came at all
    outcome: str = ""               # ok | http_error | error_event | closed | refused | hang
    served_by: str | None = None
    tokens: int = 0
    first_token: float = 0.0        # when the first token arrived (time.monotonic); 0: none came
    retry_after: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def client_address(n: int) -> str:
    """The loopback address client n connects from (any 127/8 address is this host's own)."""
    return f"127.0.1.{n + 1}"


def connection(url: str, timeout: float, source: str | None = None,
               cafile: str | None = None) -> http.client.HTTPConnection:
    u = urlsplit(url)
    src = (source, 0) if source else None
    if u.scheme == "https":
        return http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout, source_address=src,
                                           context=ssl.create_default_context(cafile=cafile))
    return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout, source_address=src)


def stream_once(url: str, prompt: str, max_tokens: int, read_timeout: float = 30,
                source: str | None = None, cafile: str | None = None) -> Result:
    """One streamed /generate, read event by event as scripts/stream_generate.py does."""
    r = Result(start=time.monotonic())
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "temperature": 0})
    conn = connection(url, read_timeout, source, cafile)
    try:
        conn.request("POST", "/generate", body, {"Content-Type": "application/json",
                                                 "Accept": "text/event-stream"})
        resp = conn.getresponse()
        r.status, r.served_by = resp.status, resp.getheader("X-Served-By")
        r.retry_after = resp.getheader("Retry-After")
        if resp.status != 200:
            r.outcome, r.detail = "http_error", resp.read()[:300].decode(errors="replace")
            return r
        for events in iter_reads(resp):
            for event in events:
                if event.name == "done":
                    r.outcome = "ok"
                    return r
                if event.name == "error":
                    r.outcome, r.detail = "error_event", event.data[:300]
                    return r
                if event.name == "message" and "token" in event.json():
                    r.tokens += 1
                    r.first_token = r.first_token or time.monotonic()
        r.outcome = "closed"  # the connection ended without a done or error event
    except ssl.SSLError as e:  # a TLS failure is the balancer's, never a hang or a closed stream
        r.outcome, r.detail = "tls", repr(e)
    except (TimeoutError, OSError) as e:  # socket.timeout is TimeoutError
        if isinstance(e, TimeoutError):
            r.outcome = "hang"
        elif isinstance(e, ConnectionRefusedError):
            r.outcome = "refused"
        else:
            r.outcome = "closed"
        r.detail = repr(e)
    except http.client.HTTPException as e:  # IncompleteRead, RemoteDisconnected, BadStatusLine
        r.outcome, r.detail = "closed", repr(e)
    finally:
        r.end = time.monotonic()
        conn.close()
    return r


@dataclass
class Load:
    """Start with .start(); stop with .stop() (or let max_requests / duration end it)."""
    url: str
    clients: int = 3
    max_requests: int = 400
    duration: float = 120.0
    max_tokens: int = 24
    pause: float = 0.0
    prompts: tuple[str, ...] = tuple(PROMPTS)
    honour_retry_after: bool = False  # after a 503, wait the seconds its Retry-After says, as a polite client does
    cafile: str | None = None    # the pool's certificate, for an https:// url
    results: list[Result] = field(default_factory=list)
    on_result: Callable[[Result], None] | None = None

    def __post_init__(self):
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sent = 0
        self._threads: list[threading.Thread] = []

    def _take(self) -> bool:
        with self._lock:
            if self._stop.is_set() or self._sent >= self.max_requests or time.monotonic() > self._deadline:
                return False
            self._sent += 1
            return True

    def _worker(self, n: int) -> None:
        i = n
        while self._take():
            r = stream_once(self.url, self.prompts[i % len(self.prompts)], self.max_tokens,
                            source=client_address(n), cafile=self.cafile)
            i += self.clients
            with self._lock:
                self.results.append(r)
            if self.honour_retry_after and r.status == 503 and (r.retry_after or "").isdigit():
                self._stop.wait(int(r.retry_after))
            elif self.pause:
                time.sleep(self.pause)

    def start(self) -> Load:
        self._deadline = time.monotonic() + self.duration
        self._threads = [threading.Thread(target=self._worker, args=(n,), daemon=True)
                         for n in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 60, wait: bool = False) -> list[Result]:
        """End the load now, or with wait=True once its count or duration is used up."""
        if not wait:
            self._stop.set()
        for t in self._threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self._threads), "a load client is still waiting: a hang"
        return self.results

    def wait_for(self, count: int, timeout: float = 60) -> None:
        """Until `count` more requests have finished (steady state reached)."""
        target = len(self.results) + count
        deadline = time.monotonic() + timeout
        while len(self.results) < target:
            assert time.monotonic() < deadline, f"load made no progress ({len(self.results)} results)"
            time.sleep(0.1)


def count(results: list[Result]) -> dict:
    c = {"sent": len(results), "succeeded": sum(r.ok for r in results)}
    c["failed"] = c["sent"] - c["succeeded"]
    outcomes: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = f"{r.outcome}{'/' + str(r.status) if r.status else ''}"
            outcomes[key] = outcomes.get(key, 0) + 1
    c["failures"] = outcomes
    return c


def report(title: str, phases: dict[str, list[Result]]) -> str:
    """A table of counts by phase, which the tests print."""
    lines = [f"--- {title}", f"{'phase':<44} {'sent':>5} {'ok':>5} {'failed':>6}  failures"]
    for name, rs in phases.items():
        c = count(rs)
        lines.append(f"{name:<44} {c['sent']:>5} {c['succeeded']:>5} {c['failed']:>6}  {c['failures'] or ''}")
    return "\n".join(lines)
