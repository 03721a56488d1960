"""Hostile input at the node's front door: the web role's NGINX site in front of the real backend on
SmolLM2, one stack for the whole module, and the balancer role's HAProxy in front of that (the local
pool's front door, same template). Every answer is JSON {"error": {"type", "message"}} with its
status (never a 500, never one of NGINX's or HAProxy's HTML pages; the one exception, HAProxy 2.6's
HTTP/1 parser, is test_balancer_refuses_malformed_http_at_once), nothing hangs, and the node serves
a normal request after each case."""
from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import time
from http.client import HTTPResponse
from pathlib import Path

import pytest
from conftest import Front, nginx_conf  # tests/web/conftest.py: the shipped site run by real NGINX
from web_helpers import NGINX, ONE_THREAD, ROOT, WEB, counter, free_port

sys.path.insert(0, str(ROOT / "pool"))
from local import render_balancer_config

CTX = 512
# One slot, one waiting place: the third concurrent request must be refused at once.
BACKEND_ARGS = (*ONE_THREAD, "--ctx", str(CTX), "--parallel", "1", "--max-queue", "1",
                "--node-name", "hostile-node")
CLIENT_TIMEOUT = 2  # web_client_timeout for the slow-client cases (the role's default is longer)


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"{what} did not listen within {timeout} s"
            time.sleep(0.05)  # a poll interval


@pytest.fixture(scope="module")
def node(tmp_path_factory, render_site, smollm2_model):
    """Backend (SmolLM2, 1 slot, queue 1, context 512) behind the shipped NGINX site."""
    tmp = tmp_path_factory.mktemp("hostile")
    port = free_port()
    log = open(tmp / "backend.log", "wb")
    backend = subprocess.Popen([str(Path(sys.executable).parent / "ampere-llm-server"), "--model",
                                str(smollm2_model), *BACKEND_ARGS, "--host", "127.0.0.1", "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    prefix = tmp / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    web_port = free_port()
    site = render_site(web_port=web_port, web_listen_addresses=["127.0.0.1"], web_root=str(WEB),
                       web_backend=f"127.0.0.1:{port}", web_node_name="front-test",
                       web_access_log=str(prefix / "access.log"), web_client_timeout=CLIENT_TIMEOUT,
                       # many requests from one address here: the rate limit has its own test
                       web_rate_limit_rps=1000, web_rate_limit_burst=1000)
    (prefix / "ampere-llm.conf").write_text(site)
    (prefix / "nginx.conf").write_text(nginx_conf(prefix, prefix / "ampere-llm.conf"))
    nginx = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e",
                              str(prefix / "error.log")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    f = Front(f"http://127.0.0.1:{web_port}", prefix, nginx, site)
    try:
        _wait_port(web_port, nginx, "nginx")
        deadline = time.monotonic() + 120
        while f.request("GET", "/readyz")[0] != 200:
            assert backend.poll() is None, (tmp / "backend.log").read_text()
            assert time.monotonic() < deadline, "backend not ready"
            time.sleep(0.1)  # a poll interval
        f.backend = backend
        f.backend_url = f"http://127.0.0.1:{port}"
        yield f
    finally:
        for p in (nginx, backend):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()
        print(f"--- backend log\n{(tmp / 'backend.log').read_text(errors='replace')[-6000:]}")
        print(f"--- nginx error.log\n{f.error_log()[-3000:]}")


def raw(f, data: bytes, timeout: float = 30) -> tuple[int, dict, bytes]:
    """Send `data` as is (request line, headers, body) to `f.url` and read one response: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", int(f.url.rsplit(":", 1)[1])), timeout=timeout) as s:
        s.sendall(data)
        resp = HTTPResponse(s)
        resp.begin()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def post(f: Front, path: str, body: bytes, content_type: str | None = "application/json",
         extra: bytes = b"") -> tuple[int, dict, bytes]:
    head = f"POST {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    return raw(f, head.encode() + extra + b"\r\n" + body)


def assert_json_error(status: int, headers: dict, body: bytes, want: int) -> dict:
    assert status == want, (status, body[:500])
    assert headers.get("content-type", "").startswith("application/json"), (headers, body[:300])
    err = json.loads(body)["error"]
    assert err["type"] and err["message"], err
    return err


def assert_serving(f: Front) -> None:
    """The node still generates: the backend process lives and a normal request gets tokens."""
    assert f.backend.poll() is None, "the backend died"
    assert f.proc.poll() is None, "nginx died"
    status, _, body = post(f, "/generate", json.dumps({"prompt": "Hi", "max_tokens": 2, "stream": False}).encode())
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] >= 1, body


def dumps(obj) -> bytes:
    return json.dumps(obj).encode()


GEN, CHAT, COMP = "/generate", "/v1/chat/completions", "/v1/completions"
USER = [{"role": "user", "content": "Hi"}]
BAD_BODIES = [  # (id, route, body, content type, status, words in the message)
    ("malformed-json", GEN, b'{"prompt": ', "application/json", 400, "not valid JSON"),
    ("malformed-json-chat", CHAT, b'{"messages": [', "application/json", 400, "not valid JSON"),
    ("empty-body", GEN, b"", "application/json", 400, "not valid JSON"),
    ("empty-body-chat", CHAT, b"", "application/json", 400, "not valid JSON"),
    ("form-content-type", GEN, dumps({"prompt": "Hi"}), "application/x-www-form-urlencoded", 415, "application/json"),
    ("text-content-type", CHAT, dumps({"messages": USER}), "text/plain", 415, "application/json"),
    ("multipart", COMP, b"--x\r\n\r\n--x--", "multipart/form-data; boundary=x", 415, "application/json"),
    ("deep-nesting", GEN, b"[" * 200_000 + b"]" * 200_000, "application/json", 400, "nested too deeply"),
    ("deep-nesting-object", CHAT, b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "application/json", 400, ""),
    ("invalid-utf8", GEN, b'{"prompt": "\xff\xfe"}', "application/json", 400, "UTF-8"),
    ("raw-nul-byte", GEN, b'{"prompt": "a\x00b"}', "application/json", 400, "not valid JSON"),
    ("long-stop", GEN, dumps({"prompt": "Hi", "stop": ["x" * 100_000]}), "application/json", 400, "stop[0]"),
    ("long-stop-chat", CHAT, dumps({"messages": USER, "stop": "x" * 100_000}), "application/json", 400, "stop"),
    ("too-many-stops", CHAT, dumps({"messages": USER, "stop": ["a"] * 100}), "application/json", 400, "stop"),
    ("negative-max-tokens", GEN, dumps({"prompt": "Hi", "max_tokens": -1}), "application/json", 400, "max_tokens"),
    ("zero-max-tokens", CHAT, dumps({"messages": USER, "max_tokens": 0}), "application/json", 400, "max_tokens"),
    ("huge-max-tokens", COMP, dumps({"prompt": "Hi", "max_tokens": 10**30}), "application/json", 400, "max_tokens"),
    ("max-tokens-string", CHAT, dumps({"messages": USER, "max_tokens": "5"}), "application/json", 400, "max_tokens"),
    ("temperature-nan", CHAT, b'{"messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}',
     "application/json", 400, "NaN"),
    ("temperature-infinity", GEN, b'{"prompt": "Hi", "temperature": Infinity}', "application/json", 400,
     "Infinity"),
    ("temperature-overflow", COMP, b'{"prompt": "Hi", "temperature": 1e400}', "application/json", 400,
     "temperature"),
    ("temperature-string", CHAT, dumps({"messages": USER, "temperature": "hot"}), "application/json", 400,
     "temperature"),
    ("temperature-bool", GEN, dumps({"prompt": "Hi", "temperature": True}), "application/json", 400, "temperature"),
    ("top-p-bool", CHAT, dumps({"messages": USER, "top_p": False}), "application/json", 400, "top_p"),
    ("n-2", CHAT, dumps({"messages": USER, "n": 2}), "application/json", 400, "n:"),
    ("n-2-completions", COMP, dumps({"prompt": "Hi", "n": 2}), "application/json", 400, "n:"),
    ("unknown-field-generate", GEN, dumps({"prompt": "Hi", "max_token": 5}), "application/json", 400,
     "unknown field"),
    ("stream-string", GEN, dumps({"prompt": "Hi", "stream": "true"}), "application/json", 400, "stream"),
    ("stream-string-chat", CHAT, dumps({"messages": USER, "stream": "false"}), "application/json", 400, "stream"),
    ("huge-logit-bias", CHAT, dumps({"messages": USER, "logit_bias": {str(i): 100 for i in range(50_000)}}),
     "application/json", 400, "logit_bias"),
    ("too-many-messages", CHAT, dumps({"messages": USER * 1001}), "application/json", 400, "messages"),
    ("image-part", CHAT, dumps({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]}),
     "application/json", 400, "image_url"),
    ("prompt-over-context", GEN, dumps({"prompt": "word " * 4000}), "application/json", 400,
     f"the context holds {CTX}"),
    ("prompt-near-body-limit", COMP, dumps({"prompt": "word " * 190_000}), "application/json", 400,
     f"the context holds {CTX}"),
    ("chat-over-context", CHAT, dumps({"messages": [{"role": "user", "content": "word " * 4000}]}),
     "application/json", 400, f"the context holds {CTX}"),
    ("array-body", COMP, b"[1, 2]", "application/json", 400, "expected object"),
    ("prompt-array-of-ints", COMP, dumps({"prompt": [1, 2, 3]}), "application/json", 400, "prompt"),
]


@pytest.mark.parametrize("route, body, ctype, status, says",
                         [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES])
def test_bad_body_is_a_json_error(node, route, body, ctype, status, says):
    err = assert_json_error(*post(node, route, body, ctype), status)
    assert says in err["message"], err
    assert_serving(node)


ODD_BUT_FINE = [  # (id, route, body): answered 200, these are valid requests
    ("nul-escaped-in-prompt", GEN, dumps({"prompt": "a\u0000b", "max_tokens": 2, "stream": False})),
    ("long-model-name", CHAT, dumps({"messages": USER, "model": "m" * 100_000, "max_tokens": 2})),
    ("unknown-field-openai", CHAT, dumps({"messages": USER, "max_tokens": 2, "frobnicate": {"x": [1]}})),
    ("no-content-type", GEN, dumps({"prompt": "Hi", "max_tokens": 2, "stream": False})),
]


@pytest.mark.parametrize("route, body", [c[1:] for c in ODD_BUT_FINE], ids=[c[0] for c in ODD_BUT_FINE])
def test_odd_but_valid_body_is_answered(node, route, body):
    ctype = None if body is ODD_BUT_FINE[3][2] else "application/json"
    status, headers, reply = post(node, route, body, ctype)
    assert status == 200, reply[:500]
    assert headers["content-type"].startswith("application/json")
    assert_serving(node)


ENCODED = [  # (id, Content-Encoding, body): NGINX takes request bodies uncompressed only
    ("gzip-bomb", "gzip", gzip.compress(b'{"prompt": "' + b"a" * 20_000_000 + b'"}')),
    ("bad-gzip", "gzip", b"not gzip at all"),
    ("brotli", "br", b"not brotli either"),
]


@pytest.mark.parametrize("encoding, body", [c[1:] for c in ENCODED], ids=[c[0] for c in ENCODED])
def test_compressed_body_is_json_415(node, encoding, body):
    err = assert_json_error(*post(node, GEN, body, extra=f"Content-Encoding: {encoding}\r\n".encode()), 415)
    assert "uncompressed" in err["message"]
    assert_serving(node)


def test_backend_alone_answers_a_bad_gzip_body_with_400(node):
    """Behind NGINX no compressed body arrives; on its own the backend still answers one it cannot
    inflate with a JSON 400 (it was a 500), and one that inflates past --max-body-bytes with a 413."""
    class Direct:
        url = node.backend_url
    for body, status in ((b"not gzip at all", 400), (ENCODED[0][2], 413)):
        head = (f"POST /generate HTTP/1.1\r\nHost: node\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        assert_json_error(*raw(Direct, head + body), status)
    assert_serving(node)


def test_body_over_the_limit_is_json_413(node):
    body = b'{"prompt": "' + b"x" * (2 << 20) + b'"}'
    err = assert_json_error(*post(node, GEN, body), 413)
    assert err["type"] == "payload_too_large"
    # Chunked, with no Content-Length: NGINX counts as it reads.
    chunk = b"x" * (1 << 20)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    assert_json_error(*raw(node, b"POST /v1/chat/completions HTTP/1.1\r\nHost: node\r\nConnection: close\r\n"
                                 b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked),
                      413)
    assert_serving(node)


ROUTES = ["/generate", "/v1/chat/completions", "/v1/completions", "/v1/models", "/healthz", "/readyz",
          "/openapi.json", "/metrics", "/", "/index.html"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "TRACE", "OPTIONS", "PATCH", "PROPFIND", "FOO"])
@pytest.mark.parametrize("path", ROUTES)
def test_other_methods_are_json_405(node, method, path):
    status, headers, body = raw(node, f"{method} {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n"
                                      f"Content-Length: 0\r\n\r\n".encode())
    assert_json_error(status, headers, body, 405)


URLS = [  # (id, request target, status)
    ("dotdot", "/../../etc/passwd", 400),
    ("dotdot-encoded", "/%2e%2e/%2e%2e/etc/passwd", 400),
    ("dotdot-in-api", "/v1/../../../etc/passwd", 400),
    ("dotdot-encoded-slash", "/v1/..%2f..%2f..%2fetc/passwd", 400),
    ("dotfile", "/.git/config", 404),
    ("unknown-page", "/no-such-page", 404),
    ("unknown-api", "/v1/nope", 404),
    ("nul-in-path", "/gen%00erate", 400),
    ("long-url", "/" + "a" * 20_000, 414),
    ("raw-utf8-in-api", "/v1/m\u00f6dels", 400),
    ("raw-utf8-in-health", "/readyz?x=\u00f6", 400),
    ("options-star", "*", 400),
    ("absolute-form-elsewhere", "http://evil.example/nope", 404),
]


@pytest.mark.parametrize("target, status", [u[1:] for u in URLS], ids=[u[0] for u in URLS])
def test_absurd_urls_are_json(node, target, status):
    got = raw(node, f"GET {target} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n".encode())
    assert_json_error(*got, status)
    assert b"root:" not in got[2]


BAD_REQUESTS = [  # (id, raw request, status): NGINX refuses these itself
    ("no-host", b"GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
    ("garbage-line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n", 400),
    ("bad-method", b"G(T /readyz HTTP/1.1\r\nHost: node\r\n\r\n", 400),
    ("nul-in-header", b"GET /readyz HTTP/1.1\r\nHost: node\r\nX-A: a\x00b\r\n\r\n", 400),
    ("two-lengths", b"POST /generate HTTP/1.1\r\nHost: node\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\n{}", 400),
    ("bad-chunk", b"POST /generate HTTP/1.1\r\nHost: node\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"zz\r\n{}\r\n0\r\n\r\n", 400),
    ("negative-length", b"POST /generate HTTP/1.1\r\nHost: node\r\nContent-Length: -5\r\n\r\n{}", 400),
    ("unknown-transfer-coding", b"POST /generate HTTP/1.1\r\nHost: node\r\nTransfer-Encoding: gzip\r\n\r\n{}", 501),
    ("http-9", b"GET /readyz HTTP/9.9\r\nHost: node\r\n\r\n", 505),
]


@pytest.mark.parametrize("request_bytes, status", [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_malformed_http_is_json(node, request_bytes, status):
    assert_json_error(*raw(node, request_bytes), status)
    assert_serving(node)


def test_oversized_header_is_json_431(node):
    status, headers, body = raw(node, b"GET /readyz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n"
                                      b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    assert_json_error(status, headers, body, 431)
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 4000) for i in range(40))
    status, headers, body = raw(node, b"GET /readyz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n"
                                      + many + b"\r\n")
    assert_json_error(status, headers, body, 431)
    assert_serving(node)


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return got


SLOW = [  # (id, what the client sends before it stops)
    ("headers", b"GET /readyz HTTP/1.1\r\nHost: node\r\nX-Slow: 1\r\n"),
    ("body", b"POST /generate HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\n"
             b"Content-Length: 100\r\nX-Slow: 1\r\n\r\n{\"prompt\":"),
]


@pytest.mark.parametrize("sent", [c[1] for c in SLOW], ids=[c[0] for c in SLOW])
def test_slow_client_is_cut(node, sent):
    """A client that stops half-way through its headers or body (slowloris) is closed after
    web_client_timeout, not held for minutes; NGINX answers nothing (it logs a 408)."""
    log = node.prefix / "access.log"
    before = log.read_text().count('" 408 ')
    s = socket.create_connection(("127.0.0.1", int(node.url.rsplit(":", 1)[1])))
    t0 = time.monotonic()
    s.sendall(sent)
    got = _read_all(s, CLIENT_TIMEOUT + 10)
    took = time.monotonic() - t0
    s.close()
    assert took < CLIENT_TIMEOUT + 10 and got == b"", (took, got[:300])
    assert log.read_text().count('" 408 ') == before + 1
    assert_serving(node)


def _stream(node, prompt: str = "Count from 1 to 500, separated by commas.", route: str = GEN,
            stream: bool = True) -> socket.socket:
    fields = {"max_tokens": 400, "temperature": 0, "stream": stream}
    body = dumps({**fields, "messages": [{"role": "user", "content": prompt}]} if route == CHAT
                 else {**fields, "prompt": prompt})
    s = socket.create_connection(("127.0.0.1", int(node.url.rsplit(":", 1)[1])), timeout=60)
    s.sendall(f"POST {route} HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\n".encode()
              + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    return s


def _read_until(s: socket.socket, marker: bytes) -> bytes:
    got = b""
    while marker not in got:
        chunk = s.recv(65536)
        assert chunk, got[-500:]
        got += chunk
    return got


def _readyz(node) -> dict:
    return json.loads(node.request("GET", "/readyz")[2])


def test_beyond_the_queue_is_503_at_once(node):
    """1 slot + 1 queue place: further requests get 503 + Retry-After JSON at once, not a hang."""
    running = _stream(node)
    _read_until(running, b'data: {"token"')
    waiting = _stream(node)
    deadline = time.monotonic() + 30
    while _readyz(node)["queue_depth"] < 1:
        assert time.monotonic() < deadline, "the second request never queued"
        time.sleep(0.05)  # a poll interval
    try:
        for route, body in ((GEN, {"prompt": "Hi"}), (CHAT, {"messages": USER}), (COMP, {"prompt": "Hi"})):
            status, headers, reply = post(node, route, dumps(body))
            err = assert_json_error(status, headers, reply, 503)
            assert err["type"] == "overloaded" and int(headers["retry-after"]) >= 1, (err, headers)
    finally:
        running.close()
        waiting.close()
    deadline = time.monotonic() + 30
    while (r := _readyz(node))["slots_busy"] or r["queue_depth"]:
        assert time.monotonic() < deadline, f"slot or queue place not freed: {r}"
        time.sleep(0.05)  # a poll interval
    assert_serving(node)


DISCONNECTS = [  # (id, route, streamed)
    ("generate-stream", GEN, True),
    ("chat-stream", CHAT, True),
    ("generate-one-reply", GEN, False),
    ("chat-one-reply", CHAT, False),
]


@pytest.mark.parametrize("route, stream", [c[1:] for c in DISCONNECTS], ids=[c[0] for c in DISCONNECTS])
def test_client_gone_mid_generation_frees_the_slot(node, route, stream):
    def cancelled() -> float:
        return counter(node.request("GET", "/metrics")[2].decode(), "ampere_llm_generations_total",
                       finish_reason="cancelled")

    before = cancelled()
    s = _stream(node, route=route, stream=stream)
    deadline = time.monotonic() + 30
    if stream:
        _read_until(s, b"data: {")
    else:  # nothing comes back before the end: wait until the generation runs
        while not _readyz(node)["slots_busy"]:
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.05)  # a poll interval
    assert _readyz(node)["slots_busy"] == 1
    s.close()
    deadline = time.monotonic() + 30
    while _readyz(node)["slots_busy"]:
        assert time.monotonic() < deadline, "the slot stayed busy after the client left"
        time.sleep(0.05)  # a poll interval
    assert cancelled() == before + 1  # stopped, not run to its 400 tokens
    assert_serving(node)


def test_many_connections_at_once_all_answered(node):
    """40 clients at once on a 1-slot node: each gets 200 or a JSON 503, none hangs, the node serves on."""
    import concurrent.futures

    def one(i: int):
        return post(node, GEN, dumps({"prompt": f"Say {i}", "max_tokens": 2, "stream": False}))

    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        results = list(pool.map(one, range(40)))
    statuses = sorted(r[0] for r in results)
    assert set(statuses) <= {200, 503}, statuses
    for status, headers, body in results:
        if status == 503:
            assert_json_error(status, headers, body, 503)
            assert headers.get("retry-after")
    assert 200 in statuses and 503 in statuses, statuses
    assert_serving(node)



class Balancer:
    def __init__(self, url: str, proc: subprocess.Popen) -> None:
        self.url, self.proc = url, proc


def start_haproxy(tmp: Path, node_port: int) -> Balancer:
    port = free_port()
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(render_balancer_config(
        balancer_bind_addresses=["127.0.0.1"], balancer_http_port=port,
        balancer_servers=[{"name": "n1", "address": "127.0.0.1", "port": node_port}],
        balancer_runtime_socket=str(tmp / "haproxy.sock"), balancer_log_target="stderr format short",
        balancer_drop_privileges=False, balancer_timeout_http_request=f"{CLIENT_TIMEOUT}s",
        balancer_check_inter_ms=200, balancer_check_fastinter_ms=100))
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(port, proc, "haproxy")
    return Balancer(f"http://127.0.0.1:{port}", proc)


@pytest.fixture(scope="module")
def balancers(node, tmp_path_factory):
    """HAProxy on the balancer role's configuration: one before the node, one whose only node is down."""
    up = start_haproxy(tmp_path_factory.mktemp("haproxy-up"), int(node.url.rsplit(":", 1)[1]))
    down = start_haproxy(tmp_path_factory.mktemp("haproxy-down"), free_port())  # nothing listens there
    deadline = time.monotonic() + 30
    while raw(up, b"GET /readyz HTTP/1.1\r\nHost: pool\r\nConnection: close\r\n\r\n")[0] != 200:
        assert time.monotonic() < deadline, "HAProxy never found the node ready"
        time.sleep(0.1)  # a poll interval
    yield up, down
    for b in (up, down):
        b.proc.terminate()
        b.proc.wait(10)


THROUGH_BALANCER = [  # (id, raw request, status): what the node answers, passed on by HAProxy
    ("dotdot", b"GET /../../etc/passwd HTTP/1.1\r\nHost: pool\r\nConnection: close\r\n\r\n", 400),
    ("trace", b"TRACE / HTTP/1.1\r\nHost: pool\r\nConnection: close\r\n\r\n", 405),
    ("bad-json", b"POST /generate HTTP/1.1\r\nHost: pool\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1\r\nConnection: close\r\n\r\n{", 400),
    ("form-body", b"POST /v1/completions HTTP/1.1\r\nHost: pool\r\nContent-Type: application/x-www-form-urlencoded"
                  b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}", 415),
    ("big-body", b"POST /generate HTTP/1.1\r\nHost: pool\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 2000000\r\nConnection: close\r\n\r\n" + b" " * 2_000_000, 413),
    ("unknown-page", b"GET /wp-admin/ HTTP/1.1\r\nHost: pool\r\nConnection: close\r\n\r\n", 404),
]


@pytest.mark.parametrize("request_bytes, status", [c[1:] for c in THROUGH_BALANCER],
                         ids=[c[0] for c in THROUGH_BALANCER])
def test_through_the_balancer_errors_are_json(node, balancers, request_bytes, status):
    up, _ = balancers
    assert_json_error(*raw(up, request_bytes), status)
    assert up.proc.poll() is None
    assert_serving(node)


def test_balancer_without_a_ready_node_is_json_503(balancers):
    _, down = balancers
    status, headers, body = raw(down, b"POST /generate HTTP/1.1\r\nHost: pool\r\nContent-Length: 2\r\n"
                                      b"Connection: close\r\n\r\n{}")
    assert_json_error(status, headers, body, 503)
    assert headers.get("retry-after")


HAPROXY_PARSER = [  # (id, what the client sends, status): refused by HAProxy's HTTP/1 parser itself
    ("garbage-line", b"\x16\x03\x01\x02\x00 hello\r\n\r\n", 400),
    ("oversized-header", b"GET /readyz HTTP/1.1\r\nHost: pool\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", 400),
    ("bad-length", b"POST /generate HTTP/1.1\r\nHost: pool\r\nContent-Length: x\r\n\r\n{}", 400),
    ("slow-headers", b"GET /readyz HTTP/1.1\r\nHost: pool\r\n", 408),
]


@pytest.mark.parametrize("sent, status", [c[1:] for c in HAPROXY_PARSER], ids=[c[0] for c in HAPROXY_PARSER])
def test_balancer_refuses_malformed_http_at_once(node, balancers, sent, status):
    """Answered with the right status within timeout http-request, the connection closed, HAProxy and
    the node serving on. The body is HAProxy's built-in HTML here: before 3.2 its HTTP/1 parser
    ignores custom error pages (haproxy/haproxy#3032; Debian 12 ships 2.6)."""
    up, _ = balancers
    s = socket.create_connection(("127.0.0.1", int(up.url.rsplit(":", 1)[1])))
    t0 = time.monotonic()
    s.sendall(sent)
    got = _read_all(s, CLIENT_TIMEOUT + 10)
    s.close()
    assert time.monotonic() - t0 < CLIENT_TIMEOUT + 10
    assert got.startswith(f"HTTP/1.1 {status} ".encode()) and b"Connection: close" in got, got[:300]
    assert up.proc.poll() is None
    assert raw(up, b"GET /readyz HTTP/1.1\r\nHost: pool\r\nConnection: close\r\n\r\n")[0] == 200
    assert_serving(node)
