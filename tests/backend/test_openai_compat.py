"""What the OpenAI routes accept, on the real app and engine (tiny model): text parts, the developer
role, a message's name, null as "not given" for every optional field, the harmless values clients
send by default, the fields that are refused with a 400 that says why, and structured output's
requests (the answers themselves are checked on SmolLM2 in test_clients.py and tests/batching)."""
from __future__ import annotations

import pytest
from ampere_llm_server import schema
from ampere_llm_server.text import chat_renderer

HI = [{"role": "user", "content": "Hi"}]
GREEDY = {"temperature": 0, "max_tokens": 4}


async def chat(client, body: dict) -> tuple[int, dict]:
    r = await client.post("/v1/chat/completions", json=body)
    return r.status, await r.json()


async def test_text_parts_developer_role_and_name_read_as_their_plain_spelling(client):
    """Parts joined with newlines, developer = system, a name the template does not use changes
    nothing: the same prompt tokens and the same greedy answer as the plain request."""
    plain = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "Hello\nworld"}]
    spelled = [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
               {"role": "user", "name": "ann", "content": [{"type": "text", "text": "Hello"},
                                                          {"type": "text", "text": "world"}]}]
    status, want = await chat(client, {"messages": plain, **GREEDY})
    assert status == 200
    status, got = await chat(client, {"messages": spelled, **GREEDY})
    assert status == 200, got
    assert got["usage"] == want["usage"]
    assert got["choices"][0]["message"] == want["choices"][0]["message"]
    # /generate reads messages the same way
    r = await client.post("/generate", json={"messages": spelled, "stream": False, **GREEDY})
    assert r.status == 200 and (await r.json())["usage"] == {
        k: want["usage"][k] for k in ("prompt_tokens", "completion_tokens")}


def test_a_template_that_uses_name_gets_it():
    render = chat_renderer({"tokenizer.chat_template": "{% for m in messages %}{{ m.role }}"
                            "{% if m.name %} ({{ m.name }}){% endif %}: {{ m.content }}\n"
                            "{% endfor %}"}, "", "")
    from ampere_llm_server.pipeline import chat_messages
    msgs = chat_messages([{"role": "developer", "content": "x"},
                          {"role": "user", "name": "ann", "content": [{"type": "text", "text": "a"},
                                                                      {"type": "text", "text": "b"}]}])
    assert render(msgs) == "system: x\nuser (ann): a\nb\n"


def _all_null(spec: schema.S, keep: dict) -> dict:
    return {**{k: None for k in spec.properties if k not in keep}, **keep}


async def test_null_means_not_given_for_every_optional_field(client):
    """Every field each route declares, sent as null (as several clients do), is taken as absent."""
    status, body = await chat(client, _all_null(schema.CHAT_COMPLETIONS, {"messages": HI}))
    assert status == 200, body
    r = await client.post("/v1/completions", json=_all_null(schema.COMPLETIONS, {"prompt": "Hi"}))
    assert r.status == 200, await r.text()
    r = await client.post("/generate", json=_all_null(schema.GENERATE, {"prompt": "Hi",
                                                                        "stream": False}))
    assert r.status == 200, await r.text()
    status, body = await chat(client, {"messages": [{"role": "user", "content": "Hi", "name": None,
                                                     "tool_calls": None, "refusal": None}]})
    assert status == 200, body


# What LangChain, LiteLLM and the openai SDK may send with default or harmless values.
HARMLESS = {"n": 1, "stream": False, "logprobs": False, "top_logprobs": 0, "user": "u-1",
            "seed": 3, "presence_penalty": 0, "frequency_penalty": 0, "tools": [],
            "tool_choice": "none", "parallel_tool_calls": True, "store": False, "logit_bias": {},
            "modalities": ["text"], "metadata": {"a": "b"}, "service_tier": "auto",
            "stream_options": {"include_usage": True}, "response_format": {"type": "text"},
            "model": "anything", "an_unknown_field": {"x": 1}}


async def test_harmless_values_of_unsupported_fields_are_accepted(client):
    status, body = await chat(client, {"messages": HI, **GREEDY, **HARMLESS})
    assert status == 200, body
    r = await client.post("/v1/completions", json={
        "prompt": "Hi", **GREEDY, "n": 1, "best_of": 1, "echo": False, "logprobs": None,
        "suffix": "", "user": "u"})
    assert r.status == 200, await r.text()


REFUSED = [  # (route, field, value, words the 400 says)
    ("chat", "n", 2, "n: one choice per request"),
    ("chat", "logprobs", True, "logprobs: log probabilities are not returned"),
    ("chat", "top_logprobs", 3, "top_logprobs: log probabilities are not returned"),
    ("chat", "tools", [{"type": "function", "function": {"name": "f"}}],
     "tools: this server does not call tools"),
    ("chat", "tool_choice", "required", "tool_choice: this server does not call tools"),
    ("chat", "functions", [{"name": "f"}], "functions: this server does not call tools"),
    ("chat", "logit_bias", {"50256": -100}, "logit_bias: logit_bias is not supported"),
    ("chat", "store", True, "store: completions are not stored"),
    ("chat", "audio", {"voice": "alloy", "format": "mp3"}, "audio: this model reads and writes"),
    ("chat", "modalities", ["text", "audio"], "modalities: this model reads and writes text"),
    ("chat", "prediction", {"type": "content", "content": "x"}, "prediction: predicted outputs"),
    ("chat", "reasoning_effort", "high", "reasoning_effort: this model does not reason"),
    ("completions", "n", 3, "n: one choice per request"),
    ("completions", "best_of", 2, "best_of: one candidate per request"),
    ("completions", "echo", True, "echo: the prompt is not echoed"),
    ("completions", "logprobs", 2, "logprobs: log probabilities are not returned"),
    ("completions", "suffix", "end", "suffix: text after the insertion point"),
]


@pytest.mark.parametrize("route, field, value, says", REFUSED, ids=[f"{r}.{f}" for r, f, *_ in REFUSED])
async def test_fields_that_cannot_be_honoured_are_a_400_that_says_so(client, route, field, value,
                                                                      says):
    body = {"messages": HI} if route == "chat" else {"prompt": "Hi"}
    r = await client.post(f"/v1/{'chat/' if route == 'chat' else ''}completions",
                          json={**body, **GREEDY, field: value})
    assert r.status == 400
    message = (await r.json())["error"]["message"]
    assert says in message and "is accepted" in message, message


BAD_MESSAGES = [
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]},
     "messages[0].content[0]: a part of type image_url cannot be read: this model takes text only"),
    ({"role": "user", "content": [{"type": "text"}]}, "messages[0].content[0].text: is required"),
    ({"role": "tool", "content": "42", "tool_call_id": "c1"},
     "messages[0].role: tool messages are not supported"),
    ({"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
     "messages[0].tool_calls: this server does not call tools"),
    ({"role": "assistant", "content": None}, "messages[0].content: is required"),
]


@pytest.mark.parametrize("message, says", BAD_MESSAGES, ids=[s.split(": ")[0] + " " + s.split()[-1]
                                                             for _, s in BAD_MESSAGES])
async def test_what_cannot_be_read_in_messages_is_a_400_naming_it(client, message, says):
    status, body = await chat(client, {"messages": [message]})
    assert status == 400 and says in body["error"]["message"], body


SCHEMA_ERRORS = [  # (body, words the 400 says)
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {
        "type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}}}}},
     "response_format.json_schema.schema: properties.age: keyword 'minimum' is not supported"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {
        "type": "array", "items": {"type": "string"}, "uniqueItems": True}}}},
     "keyword 'uniqueItems' is not supported"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {
        "type": "string", "pattern": "[a-z]+"}}}}, "pattern must be anchored"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {
        "$ref": "https://example.com/s.json"}}}}, "only local $ref"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema: is required"),
    ({"response_format": {"type": "json_object"}, "stop": ["}"]},
     "stop: not with response_format: a stop string could cut the JSON short"),
    ({"response_format": {"type": "xml"}}, "response_format.type: must be one of"),
]


@pytest.mark.parametrize("extra, says", SCHEMA_ERRORS, ids=[s[:40] for _, s in SCHEMA_ERRORS])
async def test_structured_output_requests_that_cannot_be_kept_are_a_400(client, extra, says):
    status, body = await chat(client, {"messages": HI, **extra})
    assert status == 400 and says in body["error"]["message"], body


async def test_generate_takes_a_json_schema_or_a_response_format(client):
    person = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    for extra in ({"json_schema": person},
                  {"response_format": {"type": "json_schema", "json_schema": {"schema": person}}},
                  {"response_format": {"type": "json_object"}}):
        r = await client.post("/generate", json={"prompt": "Hi", "stream": False, **GREEDY,
                                                 **extra})
        assert r.status == 200, await r.text()
        text = (await r.json())["text"]
        assert text.startswith("{"), text  # random weights, but the grammar holds
    r = await client.post("/generate", json={"prompt": "Hi", "json_schema": person,
                                             "response_format": {"type": "json_object"}})
    assert r.status == 400 and "one of json_schema or response_format" in (await r.text())
    r = await client.post("/generate", json={"prompt": "Hi", "json_schema": {"not": {}}})
    assert r.status == 400 and "json_schema: the top level: keyword 'not'" in (await r.text())


async def test_openapi_documents_what_is_implemented_accepted_and_refused(client):
    doc = await (await client.get("/openapi.json")).json()
    chat_req = doc["components"]["schemas"]["ChatCompletionRequest"]
    for words in ("Implemented:", "response_format", "Accepted and not used:",
                  "Refused unless harmless", "null means not given"):
        assert words in chat_req["description"]
    props = chat_req["properties"]
    assert "one choice per request: send n requests for n answers: only 1 or null is accepted" \
        in props["n"]["description"]
    assert "only [] or null is accepted" in props["tools"]["description"]
    assert props["messages"]["items"]["properties"]["role"]["enum"][:3] == ["system", "developer",
                                                                           "user"]
    assert "json_schema" in props["response_format"]["properties"]
    gen = doc["components"]["schemas"]["GenerateRequest"]["properties"]
    assert {"json_schema", "response_format", "frequency_penalty", "presence_penalty"} <= set(gen)


async def test_include_usage_on_both_routes(client):
    from backend_helpers import sse_events
    for route, body in (("chat/completions", {"messages": HI}), ("completions", {"prompt": "Hi"})):
        r = await client.post(f"/v1/{route}", json={**body, **GREEDY, "stream": True,
                                                     "stream_options": {"include_usage": True}})
        data = [d for name, d in await sse_events(r) if name == "message"]
        assert data[-1] == "[DONE]"
        *chunks, last = data[:-1]
        assert last["choices"] == [] and last["usage"]["completion_tokens"] == 4
        assert last["usage"]["total_tokens"] == sum(last["usage"][k] for k in (
            "prompt_tokens", "completion_tokens"))
        assert all(c["usage"] is None for c in chunks)
        r = await client.post(f"/v1/{route}", json={**body, **GREEDY, "stream": True})
        data = [d for name, d in await sse_events(r) if name == "message"]
        assert all("usage" not in c for c in data[:-1])  # not asked: not sent
