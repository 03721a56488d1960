"""The one request pipeline (pipeline.py) under every generating route: a full queue is a 503 with
Retry-After, and an engine failure is the route's error event on a stream and a JSON 500 without
one, the same on /generate and the OpenAI routes (each route only adds its wire format)."""
from __future__ import annotations

import pytest
from backend_helpers import sse_events, wait_ready
from test_service import ExplodingEngine, start_holder

ROUTES = {  # route -> a body that asks for 2 tokens
    "/generate": {"prompt": "Hi", "max_tokens": 2},
    "/v1/completions": {"prompt": "Hi", "max_tokens": 2},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
}


@pytest.mark.parametrize("route", ROUTES)
async def test_a_full_queue_is_a_503_on_every_route(make_client, route):
    client = await make_client(parallel=1, max_queue=0)
    holder = await start_holder(client)
    for stream in (True, False):
        r = await client.post(route, json={**ROUTES[route], "stream": stream})
        assert r.status == 503 and (await r.json())["error"]["type"] == "overloaded"
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    holder.close()


@pytest.mark.parametrize("route", ROUTES)
async def test_an_engine_failure_on_every_route(make_client, route):
    client = await make_client(
        factory=lambda c: ExplodingEngine(c.model, n_ctx=c.ctx, n_threads=c.threads, slots=1))
    await wait_ready(client)
    failing = {**ROUTES[route], "max_tokens": 13}  # ExplodingEngine fails a max_tokens=13 job
    r = await client.post(route, json={**failing, "stream": True})
    assert r.status == 200  # the stream had started: the failure arrives as an event
    events = [e for e in await sse_events(r) if e[0] != "comment"]
    if route == "/generate":
        name, data = events[-1]
        assert name == "error"
    else:  # OpenAI's clients read an error object in a data event; the stream still ends [DONE]
        assert events[-1] == ("message", "[DONE]")
        name, data = events[-2]
    assert data["error"]["type"] == "internal" and "boom" in data["error"]["message"]
    r = await client.post(route, json={**failing, "stream": False})
    assert r.status == 500 and (await r.json())["error"]["type"] == "internal"
    r = await client.post(route, json={**ROUTES[route], "stream": False})
    assert r.status == 200  # the engine recovered
