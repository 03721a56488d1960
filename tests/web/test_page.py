"""The chat page in Debian's Chromium, served by the shipped NGINX site in front of the real
backend with SmolLM2: it streams, stops, says when the node is busy, keeps hostile text inert,
and runs under its strict CSP without a single violation."""
from __future__ import annotations

import json
import signal
import time

import pytest
from web_helpers import LONG_PROMPT, ONE_THREAD, RawStream, counter, csp_problems, generate_body, screenshot

# Records the answer's length at every DOM change, with the page's own clock: the test compares
# the order of events, never their duration.
OBSERVE = """
window.__seen = [];
new MutationObserver(() => {
  const bodies = document.querySelectorAll('.turn.assistant .body');
  const last = bodies[bodies.length - 1];
  if (last) window.__seen.push([performance.now(), last.textContent.length]);
}).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture
def node(run_server, smollm2_model, front):
    backend = run_server(smollm2_model, *ONE_THREAD, "--node-name", "node-a")
    return front(backend.url)


def settings(page, max_tokens: int, temperature: float | None = None) -> None:
    if page.locator("#settings").get_attribute("open") is None:
        page.click("#settings summary")
    page.fill("#max-tokens", str(max_tokens))
    if temperature is not None:
        page.fill("#temperature", str(temperature))


def ask(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def answer_done(page, n: int = 1):
    """Wait until the n-th answer has its stats line (first token, tok/s, node), return it."""
    meta = page.locator(".turn.assistant .meta").nth(n - 1)
    page.wait_for_function(
        "n => { const m = document.querySelectorAll('.turn.assistant .meta')[n - 1];"
        " return m && !m.closest('.pending') && /tok\\/s/.test(m.textContent); }", arg=n)
    return meta.text_content()


def test_answer_streams_token_by_token(node, page):
    page.goto(node.url)
    page.wait_for_function("() => document.getElementById('node-text').textContent.includes('node-a')")
    settings(page, 40, 0)
    page.evaluate(OBSERVE)
    sent = []
    page.on("request", lambda r: r.url.endswith("/generate") and sent.append(json.loads(r.post_data)))
    ask(page, LONG_PROMPT)
    meta = answer_done(page)
    assert "first token" in meta and "tok/s" in meta and "node node-a" in meta, meta

    seen = page.evaluate("window.__seen")
    lengths = [n for _, n in seen if n]
    final = page.locator(".turn.assistant .body").text_content()
    assert lengths and lengths[-1] == len(final) > 20
    # Progressive: the text grew in many steps, and the first visible text was a small part of it.
    assert len(set(lengths)) >= 8, lengths
    assert lengths[0] <= len(final) / 4, (lengths[0], len(final))
    first_at = next(t for t, n in seen if n)
    assert first_at < seen[-1][0]

    # The conversation is kept and sent back as messages.
    assert sent[0]["messages"] == [{"role": "user", "content": LONG_PROMPT}]
    assert sent[0]["max_tokens"] == 40 and sent[0]["temperature"] == 0
    settings(page, 8)
    ask(page, "Thanks!")
    answer_done(page, 2)
    assert [m["role"] for m in sent[1]["messages"]] == ["user", "assistant", "user"]
    assert sent[1]["messages"][1]["content"] == final
    assert page.evaluate("document.activeElement.id") == "prompt"  # ready for the next question
    assert csp_problems(page) == []
    screenshot(page, "conversation")

    page.click("#clear")
    assert page.locator(".turn").count() == 0


def test_stop_halts_the_stream_and_the_server_cancels(node, page):
    def cancelled() -> float:
        return counter(node.request("GET", "/metrics")[2].decode(), "ampere_llm_generations_total",
                       finish_reason="cancelled")

    before = cancelled()
    page.goto(node.url)
    settings(page, 2000, 0)
    ask(page, LONG_PROMPT)
    page.wait_for_function("() => document.querySelector('.turn.assistant .body').textContent.length > 30")
    assert page.is_enabled("#stop") and not page.is_enabled("#send")
    page.click("#stop")
    meta = answer_done(page)
    assert "stopped" in meta, meta
    stopped_text = page.locator(".turn.assistant .body").text_content()
    # The server saw the disconnect (through NGINX) and counted a cancelled generation.
    deadline = time.monotonic() + 30
    while cancelled() <= before and time.monotonic() < deadline:
        time.sleep(0.05)  # a poll interval, not a wait for an outcome
    assert cancelled() > before
    assert page.locator(".turn.assistant .body").text_content() == stopped_text  # nothing after Stop
    assert page.is_enabled("#send") and not page.is_enabled("#stop")

    # Clear in the middle of an answer: the log empties and the half answer is not sent later.
    ask(page, LONG_PROMPT)
    page.wait_for_function("() => document.querySelectorAll('.turn.assistant .body')[1]?.textContent.length > 5")
    page.click("#clear")
    page.wait_for_function("() => !document.getElementById('send').disabled")
    assert page.locator(".turn").count() == 0
    sent = []
    page.on("request", lambda r: r.url.endswith("/generate") and sent.append(json.loads(r.post_data)))
    settings(page, 4)
    ask(page, "Hi")
    answer_done(page)
    assert sent[0]["messages"] == [{"role": "user", "content": "Hi"}]
    assert csp_problems(page) == []


def test_full_queue_shows_the_busy_message(run_server, smollm2_model, front, page):
    backend = run_server(smollm2_model, *ONE_THREAD, "--parallel", "1", "--max-queue", "0", "--node-name", "node-b")
    f = front(backend.url)
    # Hold the only slot: a long generation whose first token proves it is running.
    holder = RawStream(f.url, generate_body(max_tokens=2000))
    try:
        holder.read_until(b'data: {"token"')
        page.goto(f.url)
        ask(page, "Are you there?")
        notice = page.locator("#notice")
        notice.wait_for(state="visible")
        text = notice.text_content()
        assert "busy" in text and "Try again in" in text, text
        # Nothing typed is lost: the question is back in the box, the log holds no half turn.
        assert page.input_value("#prompt") == "Are you there?"
        assert page.locator(".turn").count() == 0
        screenshot(page, "busy")
    finally:
        holder.close()


XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2; alert(1)"> **bold**'


def test_hostile_text_stays_inert(node, page):
    page.goto(node.url)
    settings(page, 8)
    ask(page, XSS)
    answer_done(page)
    user = page.locator(".turn.user .body")
    assert user.text_content() == XSS
    assert page.locator("#log img, #log script").count() == 0
    assert page.evaluate("window.__xss") is None and page.dialogs_seen == []

    # The model's side: a reply carrying markup, split mid-event and mid-line as a network may
    # deliver it, with heartbeats and CRLF line ends. Served by the test (a model cannot be made
    # to say this on cue); the page must render it as text, code fence formatted.
    tokens = ["Here:", " <img src=x onerror=\"window.__xss=3;alert(3)\">", "\n```html\n",
              "<script>window.__xss=4</script>", "\n```\n", "done"]
    events = "".join(f"data: {json.dumps({'token': t})}\r\n\r\n: keep-alive\r\n\r\n" for t in tokens)
    events += ('event: done\r\ndata: {"finish_reason": "stop", "usage": {"prompt_tokens": 1, '
               '"completion_tokens": 6}, "timings": {"queue_ms": 0, "ttft_ms": 5, "tokens_per_second": 50}}\r\n\r\n')
    page.route("**/generate", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream", "X-Served-By": "node-z"}, body=events))
    ask(page, "Show me some HTML")
    answer_done(page, 2)
    reply = page.locator(".turn.assistant").nth(1)
    assert reply.locator(".body").text_content() == \
        'Here: <img src=x onerror="window.__xss=3;alert(3)"><script>window.__xss=4</script>done'
    assert reply.locator("pre code").text_content() == "<script>window.__xss=4</script>"
    assert page.locator("#log img, #log script").count() == 0
    assert page.evaluate("window.__xss") is None and page.dialogs_seen == []
    assert csp_problems(page) == []
    screenshot(page, "inert-markup")


def test_csp_is_enforced(node, page):
    page.goto(node.url)
    page.wait_for_function("() => document.getElementById('node-text').textContent.includes('ready')")
    assert csp_problems(page) == []
    # The policy is live: an inline script slipped into the page is refused and reported.
    page.evaluate("""() => { const s = document.createElement('script');
                             s.textContent = 'window.__inline = 1'; document.body.append(s); }""")
    page.wait_for_function("() => window.__csp.length > 0")
    assert page.evaluate("window.__inline") is None
    assert any("script-src" in v for v in page.evaluate("window.__csp"))


def test_api_key_asked_for_and_kept_in_the_tab(run_server, smollm2_model, front, page, tmp_path):
    key_file = tmp_path / "api-key"
    key_file.write_text("s3cret-key\n")
    key_file.chmod(0o600)
    backend = run_server(smollm2_model, *ONE_THREAD, "--api-key-file", key_file, "--node-name", "node-k")
    f = front(backend.url)
    page.goto(f.url)
    settings(page, 8)
    ask(page, "Hello")
    page.locator("#notice").wait_for(state="visible")
    assert "needs an API key" in page.text_content("#notice")
    assert page.evaluate("document.activeElement.id") == "api-key"  # settings opened at the field
    page.keyboard.type("s3cret-key")
    page.focus("#prompt")
    page.press("#prompt", "Enter")  # the question was put back; Enter sends it again
    assert "node node-k" in answer_done(page)
    assert page.evaluate("sessionStorage.getItem('ampere-llm.api-key')") == "s3cret-key"
    assert "s3cret" not in page.evaluate("JSON.stringify(localStorage)")


def test_sse_parser_takes_events_split_anywhere(node, page):
    page.goto(node.url)
    stream = ('\ufeff: keep-alive\r\n\r\ndata: {"token": "a"}\n\ndata: {"token":\r\ndata: "b"}\r\n\r\n'
              'event: done\rdata: {"x": 1}\r\rdata: no-final-blank-line')
    result = page.evaluate("""async (stream) => {
        const { SSEParser } = await import('/sse.js');
        const whole = new SSEParser().push(stream);
        for (let i = 0; i <= stream.length; i++) for (let j = i; j <= stream.length; j++) {
            const p = new SSEParser();
            const got = [...p.push(stream.slice(0, i)), ...p.push(stream.slice(i, j)), ...p.push(stream.slice(j))];
            if (JSON.stringify(got) !== JSON.stringify(whole)) return {i, j, got, whole};
        }
        return whole; }""", stream)
    assert result == [{"event": "message", "data": '{"token": "a"}'},
                      {"event": "message", "data": '{"token":\n"b"}'},
                      {"event": "done", "data": '{"x": 1}'}]


def test_cut_stream_and_unreachable_node_in_plain_words(run_server, smollm2_model, front, page):
    backend = run_server(smollm2_model, *ONE_THREAD, "--node-name", "node-c")
    f = front(backend.url)
    page.goto(f.url)
    settings(page, 2000, 0)
    ask(page, LONG_PROMPT)
    page.wait_for_function("() => document.querySelector('.turn.assistant .body').textContent.length > 30")
    backend.stop(signal.SIGKILL)  # the backend dies mid-answer; NGINX can only cut the stream
    problem = page.locator(".turn.assistant .problem")
    problem.wait_for()
    assert "cut off" in problem.text_content()
    assert len(page.locator(".turn.assistant .body").text_content()) > 30  # what arrived is kept
    assert page.is_enabled("#send")
    screenshot(page, "cut-off")

    f.proc.terminate()  # now nothing answers at all
    f.proc.wait(10)
    ask(page, "Still there?")
    page.locator("#notice").wait_for(state="visible")
    assert "Can't reach the node" in page.text_content("#notice")
    assert page.input_value("#prompt") == "Still there?"


def test_keyboard_only_and_labelled(node, page):
    page.goto(node.url)
    for label in ("Message", "Max tokens", "Temperature", "API key"):
        assert page.get_by_label(label).count() == 1, label
    assert page.get_attribute("#log", "aria-live") == "polite"
    assert page.evaluate("document.activeElement.id") == "prompt"  # ready to type on load
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")  # a new line, not a send
    page.keyboard.type("second line")
    assert page.input_value("#prompt") == "first line\nsecond line"
    assert page.locator(".turn").count() == 0
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "send"
    page.keyboard.press("Tab")  # Stop is disabled while idle: skipped
    assert page.evaluate("document.activeElement.id") == "clear"
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # opens Settings from the keyboard
    assert page.get_attribute("#settings", "open") is not None
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "max-tokens"
    page.keyboard.press("Control+a")
    page.keyboard.type("6")
    page.focus("#prompt")
    page.keyboard.press("Enter")
    assert "node node-a" in answer_done(page)
    assert page.locator(".turn.user .body").text_content() == "first line\nsecond line"
