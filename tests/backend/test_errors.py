"""Every error path answers JSON {"error": {"type", "message"}} with the right status; hostile bodies
never produce a 500 and leave the process serving."""
from __future__ import annotations

import json

import pytest


async def error_of(resp, status: int, type_: str) -> str:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["X-Served-By"] == "test-node" and resp.headers["X-Request-Id"]
    body = await resp.json()
    assert set(body) == {"error"} and body["error"]["type"] == type_
    return body["error"]["message"]


OK = {"prompt": "Hi", "max_tokens": 2, "stream": False}

BAD_BODIES = [  # (raw body, words the message must contain)
    (b"", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b"[1, 2]", "expected object, got array"),
    (b'"prompt"', "expected object, got string"),
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b'{"prompt": "\xc3\x28"}', "not valid UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"prompt": "a", "temperature": NaN}', "NaN is not valid JSON"),
    (b'{"prompt": "a", "temperature": 1e999}', "temperature: must be a finite number"),
    (b'{"prompt": "a", "max_tokens": 1' + b"0" * 400 + b"}", "max_tokens: must be <= "),
    (b'{"prompt": "a", "max_tokens": 1' + b"0" * 5000 + b"}", "not valid JSON"),
    (b'{"prompt": "a", "max_tokens": "10"}', "max_tokens: expected integer, got string"),
    (b'{"prompt": "a", "max_tokens": 2.5}', "max_tokens: expected integer, got number"),
    (b'{"prompt": "a", "max_tokens": true}', "max_tokens: expected integer, got boolean"),
    (b'{"prompt": "a", "max_tokens": 0}', "max_tokens: must be >= 1"),
    (b'{"prompt": "a", "top_p": 1.5}', "top_p: must be <= 1"),
    (b'{"prompt": "a", "seed": -1}', "seed: must be >= 0"),
    (b'{"prompt": "a", "seed": 4294967295}', "seed: must be <= 4294967294"),
    (b'{"prompt": "a", "stream": "yes"}', "stream: expected boolean, got string"),
    (b'{"prompt": "a", "stop": "x"}', "stop: expected array, got string"),
    (b'{"prompt": "a", "stop": [1]}', "stop[0]: expected string, got integer"),
    (b'{"prompt": "a", "max_token": 5}', "max_token: unknown field"),
    (b'{"prompt": ["a"]}', "prompt: expected string, got array"),
    (b'{"prompt": null}', "exactly one of prompt or messages"),  # null: not given
    (b'{"prompt": "\\ud800"}', "prompt: contains an unpaired surrogate"),
    (b"{}", "exactly one of prompt or messages"),
    (b'{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}', "exactly one of"),
    (b'{"messages": []}', "messages: needs at least 1 item"),
    (b'{"messages": [{"role": "user"}]}', "messages[0].content: is required"),
    (b'{"messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role: must be one of"),
    (b'{"messages": [{"role": "user", "content": "x", "mood": "ok"}]}',
     "messages[0].mood: unknown field"),
    (b'{"messages": [{"role": "user", "content": 5}]}', "messages[0].content: expected string"),
    (b'{"messages": "hi"}', "messages: expected array, got string"),
]


@pytest.mark.parametrize("raw, says", BAD_BODIES, ids=[s for _, s in BAD_BODIES])
async def test_bad_bodies_are_400_naming_the_field(make_client, raw, says):
    client = await make_client(max_body_bytes=1 << 20)
    resp = await client.post("/generate", data=raw, headers={"Content-Type": "application/json"})
    assert says in await error_of(resp, 400, "invalid_request")
    # ... and the process still serves
    assert (await client.post("/generate", json=OK)).status == 200


async def test_body_over_the_limit_is_413(make_client):
    client = await make_client(max_body_bytes=4096)
    big = json.dumps({"prompt": "x" * 5000}).encode()
    assert "limit is 4096" in await error_of(await client.post("/generate", data=big), 413,
                                             "payload_too_large")

    async def chunked():  # no Content-Length: the limit holds while reading
        for _ in range(10):
            yield b" " * 1000

    resp = await client.post("/generate", data=chunked())
    await error_of(resp, 413, "payload_too_large")
    assert (await client.post("/generate", json=OK)).status == 200


async def test_prompt_longer_than_context_names_both_counts(make_client):
    client = await make_client(ctx=64)
    msg = await error_of(await client.post("/generate", json={"prompt": "word " * 200}), 400,
                         "invalid_request")
    assert "the context holds 64" in msg
    n = int(msg.split("prompt is ")[1].split(" tokens")[0])
    assert n > 64


async def test_unknown_route_and_wrong_method(client):
    assert "no route GET /nope" in await error_of(await client.get("/nope"), 404, "not_found")
    resp = await client.get("/generate")
    await error_of(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]


async def test_request_id_echo_is_sanitised(client):
    resp = await client.get("/healthz", headers={"X-Request-Id": "x" * 500})
    assert resp.headers["X-Request-Id"] != "x" * 500 and len(resp.headers["X-Request-Id"]) == 16
    resp = await client.get("/healthz", headers={"X-Request-Id": "trace-1.2:3"})
    assert resp.headers["X-Request-Id"] == "trace-1.2:3"


async def test_api_key(make_client, tmp_path):
    client = await make_client(api_key="s3cret")
    for path, method in (("/generate", "post"), ("/v1/chat/completions", "post"),
                         ("/v1/completions", "post"), ("/v1/models", "get")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                        {"Authorization": "Basic s3cret"}):
            resp = await getattr(client, method)(path, json=OK, headers=headers)
            assert "Bearer" in await error_of(resp, 401, "unauthorized")
            assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert (await client.post("/generate", json=OK,
                              headers={"Authorization": "Bearer s3cret"})).status == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert (await client.get(path)).status == 200, path


EXTREMES = [{"temperature": 1e-300}, {"temperature": 5, "top_p": 0}, {"min_p": 1},
            {"repeat_penalty": 0}, {"repeat_penalty": 10, "temperature": 0},
            {"top_k": 100_000, "temperature": 5, "min_p": 0, "top_p": 1}, {"seed": 0},
            {"seed": 4294967294}, {"max_tokens": 1 << 20}]


async def test_extreme_sampling_values_never_break_the_engine(make_client):
    client = await make_client(ctx=256)
    for params in EXTREMES:
        body = {"prompt": "Hello Hello", "max_tokens": 16, "stream": False, **params}
        resp = await client.post("/generate", json=body)
        assert resp.status == 200, (params, await resp.text())
        reply = await resp.json()
        assert reply["finish_reason"] in ("length", "stop"), params
    # max_tokens beyond the context ends at the context, as "length"
    assert reply["usage"]["prompt_tokens"] + reply["usage"]["completion_tokens"] <= 256
