"""The NGINX site from the web role's template, run by real NGINX in front of the real backend:
streams pass through token by token, NGINX's own errors are JSON, limits and access rules hold."""
from __future__ import annotations

import json

import pytest
from web_helpers import ONE_THREAD, RawStream, free_port, generate_body


@pytest.fixture
def backend(run_server, smollm2_model):
    return run_server(smollm2_model, *ONE_THREAD, "--node-name", "node-a")


def test_stream_passes_through_token_by_token(backend, front):
    f = front(backend.url)
    for directive in ("proxy_buffering off;", "proxy_http_version 1.1;", "proxy_read_timeout 900s;"):
        assert directive in f.config
    s = RawStream(f.url, generate_body(max_tokens=24))
    pieces_with_tokens = []
    for piece in s.pieces():
        if b'data: {"token"' in piece:
            pieces_with_tokens.append(piece.count(b'data: {"token"'))
        if b"event: done" in s.received:
            break
    s.close()
    head = s.received.split(b"\r\n\r\n", 1)[0].decode()
    assert "text/event-stream" in head and "X-Served-By: node-a" in head, head
    # Held back by a buffer, the tokens would come in a few big pieces (or one at the end);
    # passed through, the first piece holds a token or so and many pieces follow.
    done = json.loads(s.received.split(b"event: done\ndata: ", 1)[1].split(b"\n", 1)[0])
    # every token's text arrived (one whose bytes end mid-character rides with the next)
    assert 8 <= sum(pieces_with_tokens) <= done["usage"]["completion_tokens"] <= 24
    assert pieces_with_tokens[0] <= 4, pieces_with_tokens
    assert len(pieces_with_tokens) >= 8, pieces_with_tokens


def test_security_headers_and_node_name_on_every_reply(backend, front):
    f = front(backend.url)
    for path, served_by in (("/", "front-test"), ("/readyz", "node-a"), ("/app.js", "front-test")):
        status, headers, _ = f.request("GET", path)
        assert status == 200, path
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        # Exactly one X-Served-By: the backend's own, or NGINX's for what it serves alone.
        assert headers.get_all("X-Served-By") == [served_by], path
    assert headers["Server"] == "nginx"  # server_tokens off: no version


def test_nginx_errors_are_json(backend, front):
    f = front(backend.url, web_rate_limit_rps=1, web_rate_limit_burst=2)
    # 413: a body over web_client_max_body_size (1m) never reaches the backend.
    status, headers, body = f.request("POST", "/generate", b"x" * (2 << 20),
                                      {"Content-Type": "application/json"})
    assert status == 413 and json.loads(body)["error"]["type"] == "payload_too_large"
    # 429: over the rate, NGINX answers like the backend does, with a hint when to retry.
    statuses = []
    for _ in range(30):
        status, headers, body = f.request("POST", "/generate", b"{}", {"Content-Type": "application/json"})
        statuses.append(status)
        if status == 429:
            break
    assert statuses[0] == 400  # the backend's own JSON answer to an empty body
    assert status == 429, statuses
    assert json.loads(body)["error"]["type"] == "rate_limited"
    assert headers["Retry-After"] == "1" and headers["X-Served-By"] == "front-test"
    # Health checks are never rate limited, however busy the generation routes are.
    assert f.request("GET", "/readyz")[0] == 200


def test_backend_down_is_json_502(front):
    f = front(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    status, headers, body = f.request("GET", "/readyz")
    assert status == 502 and json.loads(body)["error"]["type"] == "backend_unavailable"
    assert headers["X-Served-By"] == "front-test"
    assert f.request("GET", "/")[0] == 200  # the page still loads and can say what is wrong


def test_metrics_only_from_allowed_addresses(backend, front):
    status, _, body = front(backend.url).request("GET", "/metrics")
    assert status == 200 and b"ampere_llm_generations_total" in body
    status, _, body = front(backend.url, web_metrics_allow=["10.255.0.0/16"]).request("GET", "/metrics")
    assert status == 403 and json.loads(body)["error"]["type"] == "forbidden"


def idle_connection_open(url: str, idle: float) -> bool:
    """After one request on a keep-alive connection and `idle` seconds of silence, is it still open?"""
    import http.client
    import select
    import time
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200 and resp.getheader("Connection", "keep-alive").lower() == "keep-alive"
    time.sleep(idle)  # the idle time under test, not a wait for an outcome
    readable, _, _ = select.select([conn.sock], [], [], 0)
    closed = bool(readable) and conn.sock.recv(1) == b""  # a closed connection reads as EOF
    if not closed:  # and an open one still serves
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
    conn.close()
    return not closed


def test_idle_connections_outlive_the_load_balancers(front, render_site):
    # OCI's load balancer reuses a backend connection for up to 300 s of idleness and asks
    # backends to keep it at least 310 s: the node must never be the one to close first.
    assert render_site(web_listen_addresses=["127.0.0.1"]).count("keepalive_timeout 320s;") == 1
    no_backend = f"http://127.0.0.1:{free_port()}"  # the page alone is enough here
    assert idle_connection_open(front(no_backend).url, 2.5)
    # The variable is what NGINX applies: with 1 s, the same idle connection is closed by NGINX.
    assert not idle_connection_open(front(no_backend, web_keepalive_timeout=1).url, 2.5)


def test_client_address_comes_from_the_trusted_balancer_only(front):
    no_backend = f"http://127.0.0.1:{free_port()}"  # 502 behind the limit is fine: 429 is what counts
    limits = dict(web_rate_limit_rps=1, web_rate_limit_burst=2)

    def statuses(f, client: str, n: int) -> list[int]:
        return [f.request("GET", "/v1/models", headers={"X-Forwarded-For": client})[0] for _ in range(n)]

    # Behind a trusted balancer: two clients, two buckets, two addresses in the log.
    f = front(no_backend, web_trusted_proxies=["127.0.0.1/32"], **limits)
    assert 429 in statuses(f, "203.0.113.7", 6)
    assert statuses(f, "203.0.113.8", 1) != [429]
    log = (f.prefix / "access.log").read_text()
    assert "203.0.113.7 " in log and "203.0.113.8 " in log and "\n127.0.0.1 " not in "\n" + log
    # Not trusted (the default, or another address): the header is ignored, the peer is the client.
    for trusted in ([], ["10.9.0.0/16"]):
        f = front(no_backend, web_trusted_proxies=trusted, **limits)
        assert 429 in statuses(f, "203.0.113.7", 6)
        assert statuses(f, "203.0.113.8", 1) == [429]
        assert "203.0.113." not in (f.prefix / "access.log").read_text()
