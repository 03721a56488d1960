"""POST /generate on the tiny model, in process: stream format, JSON form, chat, stop, seeds, headers."""
from __future__ import annotations

import pytest
from backend_helpers import sse_events

GREEDY = {"temperature": 0, "max_tokens": 24}


async def stream(client, body, **kw):
    resp = await client.post("/generate", json=body, **kw)
    assert resp.status == 200, await resp.text()
    return resp, await sse_events(resp)


def text_of(events) -> str:
    return "".join(d["token"] for e, d in events if e == "message")


async def test_stream_format_and_headers(client):
    resp, events = await stream(client, {"prompt": "Hello", **GREEDY},
                                headers={"X-Request-Id": "abc-123"})
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert resp.headers["X-Served-By"] == "test-node"
    assert resp.headers["X-Request-Id"] == "abc-123"
    tokens = [d for e, d in events if e == "message"]
    assert tokens and all(set(d) == {"token"} and isinstance(d["token"], str) for d in tokens)
    name, done = events[-1]
    assert name == "done"
    assert done["finish_reason"] in ("length", "stop")
    assert done["usage"]["prompt_tokens"] >= 2
    if done["finish_reason"] == "length":
        assert done["usage"]["completion_tokens"] == GREEDY["max_tokens"]
    assert set(done["timings"]) == {"queue_ms", "ttft_ms", "tokens_per_second"}
    assert done["timings"]["ttft_ms"] >= done["timings"]["queue_ms"] >= 0


async def test_json_reply_equals_the_stream_at_temperature_0(client):
    _, events = await stream(client, {"prompt": "Once upon a time", **GREEDY})
    resp = await client.post("/generate", json={"prompt": "Once upon a time", "stream": False,
                                                 **GREEDY})
    assert resp.status == 200
    body = await resp.json()
    assert body["text"] == text_of(events) and body["text"]
    assert body["finish_reason"] == events[-1][1]["finish_reason"]
    assert body["usage"] == events[-1][1]["usage"]
    assert resp.headers["X-Request-Id"]  # made up when the client sends none


async def test_messages_use_the_chat_template(client):
    body = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Hi"}], "stream": False, **GREEDY}
    resp = await client.post("/generate", json=body)
    assert resp.status == 200
    # ChatML around both turns plus the opened assistant turn: many more tokens than the words
    assert (await resp.json())["usage"]["prompt_tokens"] > 20


async def test_stop_string_ends_before_it(client):
    body = {"prompt": "The story begins", "stream": False, "temperature": 0, "max_tokens": 40}
    full = (await (await client.post("/generate", json=body)).json())["text"]
    assert len(full) > 20
    stop = full[10:14]
    got = await (await client.post("/generate", json={**body, "stop": [stop, "\x00never"]})).json()
    assert got["finish_reason"] == "stop"
    assert got["text"] == full[: full.index(stop)]
    _, events = await stream(client, {**body, "stream": True, "stop": [stop]})
    assert text_of(events) == got["text"] and events[-1][1]["finish_reason"] == "stop"


async def test_same_seed_same_text(client):
    body = {"prompt": "Random words:", "stream": False, "temperature": 1.0, "max_tokens": 24}
    texts = [(await (await client.post("/generate", json={**body, "seed": s})).json())["text"]
             for s in (7, 7, 8)]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


@pytest.mark.parametrize("max_tokens", [1, 5])
async def test_max_tokens_is_length(client, max_tokens):
    resp = await client.post("/generate", json={"prompt": "Hello", "stream": False,
                                                 "temperature": 0, "max_tokens": max_tokens})
    body = await resp.json()
    assert body["usage"]["completion_tokens"] <= max_tokens
    if body["finish_reason"] == "length":
        assert body["usage"]["completion_tokens"] == max_tokens
