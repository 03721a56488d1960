"""The pool's front door: HAProxy terminates TLS with the tests' certificate and redirects plain
HTTP to HTTPS; it forwards each client's own address, which the nodes trust from the balancer
alone, so two clients are rate-limited apart and logged under their own addresses; and the page
streams an answer over HTTPS in Chromium without a CSP or mixed-content complaint."""
from __future__ import annotations

import json
import sys

import local
import pytest
from pool_load import connection

sys.path.insert(0, str(local.ROOT / "tests/web"))
from web_helpers import CHROMIUM, CHROMIUM_ARGS, csp_problems, screenshot

ACCESS_LOG = "/var/log/nginx/ampere-llm.access.log"  # the web role's default


def get(pool, path: str, source: str, headers: dict | None = None):
    """(status, X-Served-By, body) of one GET through the balancer from `source`."""
    conn = connection(pool.url, 30, source, pool.c.tls_cert)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("X-Served-By"), resp.read()
    finally:
        conn.close()


def test_http_redirects_to_https(pool2):
    pool = pool2
    conn = connection(pool.http_url, 10)
    conn.request("GET", "/v1/models?x=1")
    resp = conn.getresponse()
    assert resp.status == 301
    assert resp.getheader("Location") == f"https://127.0.0.1:{pool.c.https_port}/v1/models?x=1"
    conn.close()
    status, _, body = get(pool, "/v1/models", "127.0.2.9")
    assert status == 200 and json.loads(body)["data"], body


def test_clients_are_rate_limited_and_logged_apart(pool2, capsys):
    pool = pool2
    nodes = {s["node"] for s in pool.state.slots.values()}
    a, b, spoofer = "127.0.2.1", "127.0.2.2", "127.0.2.3"
    # Client a goes over its limit on every node (each node keeps its own counters: 2 r/s, burst 10).
    limited, statuses = set(), []
    for _ in range(120):
        status, node, _ = get(pool, "/v1/models", a)
        statuses.append(status)
        if status == 429:
            limited.add(node)
        if limited == nodes:
            break
    assert limited == nodes, f"client a was never limited on {nodes - limited}: {statuses}"
    # Client b, at once: its own bucket, untouched by a's requests.
    assert [get(pool, "/v1/models", b)[0] for _ in range(4)] == [200] * 4
    # A client cannot pass itself off as another: the balancer drops the X-Forwarded-For it sent.
    assert get(pool, "/healthz", spoofer, {"X-Forwarded-For": "198.51.100.7"})[0] == 200

    logs = "".join(pool.exec_in(n, "cat", ACCESS_LOG).stdout for n in sorted(nodes))
    addresses = {line.split(" ", 1)[0] for line in logs.splitlines() if line}
    with capsys.disabled():
        print(f"\nclient a: {len(statuses)} requests, {statuses.count(429)} answered 429; "
              f"addresses in the nodes' access logs: {sorted(addresses)}")
    assert {a, b, spoofer} <= addresses
    assert "198.51.100.7" not in addresses
    # Requests through the balancer are logged under their clients, never under the balancer.
    assert not [line for line in logs.splitlines() if line.startswith("127.0.0.1 ") and "/v1/models" in line]


@pytest.mark.timeout(300)
def test_page_streams_over_https_in_chromium(pool2):
    pool = pool2
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            # The certificate is self-signed: the browser is told to accept it, nothing else changes.
            context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800})
            context.add_init_script("window.__csp = []; document.addEventListener('securitypolicyviolation',"
                                    " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")
            page = context.new_page()
            page.console_messages_seen = []
            page.on("console", lambda m: page.console_messages_seen.append(f"{m.type}: {m.text}"))
            insecure = []
            page.on("request", lambda r: r.url.startswith("http:") and insecure.append(r.url))
            page.set_default_timeout(60_000)

            page.goto(pool.http_url + "/")  # plain HTTP lands on HTTPS
            assert page.url == pool.url + "/"
            assert page.evaluate("location.protocol") == "https:"
            if page.locator("#settings").get_attribute("open") is None:
                page.click("#settings summary")
            page.fill("#max-tokens", "24")
            page.fill("#temperature", "0")
            page.fill("#prompt", "Name three colours.")
            page.press("#prompt", "Enter")
            page.wait_for_function(
                "() => { const m = document.querySelector('.turn.assistant .meta');"
                " return m && !m.closest('.pending') && /tok\\/s/.test(m.textContent); }")
            meta = page.locator(".turn.assistant .meta").first.text_content()
            answer = page.locator(".turn.assistant .body").first.text_content()
            assert answer.strip(), meta
            # The node that answered is one of the pool's.
            assert any(s["node"] in meta for s in pool.state.slots.values()), meta
            assert csp_problems(page) == []
            assert not [m for m in page.console_messages_seen if "Mixed Content" in m or "insecure" in m]
            assert insecure == [pool.http_url + "/"], insecure  # only the one redirected on purpose
            screenshot(page, "pool-https")
            context.close()
        finally:
            browser.close()
