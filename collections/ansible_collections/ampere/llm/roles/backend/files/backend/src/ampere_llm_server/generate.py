"""POST /generate, and what every generating route shares (the OpenAI routes reuse all of it).

The shared path of one request: body -> validated dict (schema.py) -> chat messages read as the
template wants them (text parts, developer) -> prompt tokens (checked against the context) ->
SamplingParams, with the grammar of a structured format (grammar.py) -> admission
(scheduler.py; 503s) -> events, either streamed as server-sent events with a heartbeat or
collected into one JSON reply. A client that goes away cancels its generation: aiohttp cancels
the handler (handler_cancellation), or the next write fails; either way the `finally` below
tells the scheduler.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from . import grammar, schema
from .engine import Done, Engine, Failed, SamplingParams, Token
from .metrics import Metrics
from .scheduler import HEARTBEAT, Refused, Scheduler, Ticket

CONFIG = web.AppKey("config", Any)
METRICS = web.AppKey("metrics", Metrics)
SCHEDULER = web.AppKey("scheduler", Scheduler)
REQUEST_ID = web.RequestKey("request_id", str)
TICKET = web.RequestKey("ticket", Ticket)                 # the access log reads it
SSE = web.RequestKey("sse", web.StreamResponse)           # set once a stream is open
CLIENT_GONE = web.RequestKey("client_gone", bool)


class ApiError(Exception):
    """An error reply: {"error": {"type", "message"}} with `status` (see docs/CONTRACTS.md)."""

    def __init__(self, status: int, type_: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.headers = status, type_, message, headers or {}


def json_error(status: int, type_: str, message: str, headers=None) -> web.Response:
    return web.json_response({"error": {"type": type_, "message": message}}, status=status,
                             headers=headers)


async def read_body(request: web.Request, spec: schema.S) -> dict:
    """The request's JSON body checked against `spec`; ApiError 400/413 otherwise."""
    try:
        # A declared Content-Length over the limit was refused by the body_limit middleware;
        # aiohttp stops reading at client_max_size for chunked bodies too.
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "payload_too_large",
                       f"body is over the limit of {request.app[CONFIG].max_body_bytes} bytes")
    try:
        return schema.validate(schema.parse_json(raw), spec)
    except schema.Invalid as e:
        raise ApiError(400, "invalid_request", str(e))


@dataclass
class Prepared:
    engine: Engine
    tokens: list[int]
    params: SamplingParams


def chat_messages(messages: list[dict]) -> list[dict]:
    """Validated messages -> what the chat template reads: {role, content[, name]}. Text parts are
    joined with newlines in order (as llama-server does), developer is system, name is passed on
    (a template that does not use it ignores it); what cannot be read is a 400 that says so."""
    out = []
    for i, m in enumerate(messages):
        at = f"messages[{i}]"
        if m["role"] in ("tool", "function"):
            raise ApiError(400, "invalid_request", f"{at}.role: {m['role']} messages are not "
                           "supported: this server does not call tools or functions")
        content = m.get("content", m.get("refusal"))
        if content is None:
            raise ApiError(400, "invalid_request", f"{at}.content: is required")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if part["type"] != "text":
                    raise ApiError(400, "invalid_request", f"{at}.content[{j}]: a part of type "
                                   f"{part['type']} cannot be read: this model takes text only "
                                   "(send parts of type text)")
                if part.get("text") is None:
                    raise ApiError(400, "invalid_request", f"{at}.content[{j}].text: is required")
                texts.append(part["text"])
            content = "\n".join(texts)
        msg = {"role": "system" if m["role"] == "developer" else m["role"], "content": content}
        if m.get("name") is not None:
            msg["name"] = m["name"]
        out.append(msg)
    return out


def grammar_of(body: dict) -> str | None:
    """The GBNF an answer must follow (response_format, or /generate's json_schema), or None."""
    fmt, schema_ = body.get("response_format"), body.get("json_schema")
    if fmt is not None and schema_ is not None:
        raise ApiError(400, "invalid_request", "send one of json_schema or response_format")
    if schema_ is not None:
        where = "json_schema"
    elif fmt is None or fmt["type"] == "text":
        return None
    elif fmt["type"] == "json_object":
        where, schema_ = "response_format", grammar.JSON_OBJECT_SCHEMA
    elif fmt.get("json_schema") is None:
        raise ApiError(400, "invalid_request", "response_format.json_schema: is required with "
                       "type json_schema")
    else:
        where = "response_format.json_schema.schema"
        schema_ = fmt["json_schema"].get("schema", grammar.JSON_OBJECT_SCHEMA)
    if body.get("stop"):
        raise ApiError(400, "invalid_request", f"stop: not with {where.split('.')[0]}: a stop "
                       "string could cut the JSON short (the grammar ends the answer when the "
                       "JSON is complete)")
    try:
        return grammar.to_gbnf(schema_)
    except grammar.Unsupported as e:
        raise ApiError(400, "invalid_request", f"{where}: {e}")


async def prepare(request: web.Request, body: dict, *, prompt: str | None = None,
                  messages: list | None = None, stop: tuple[str, ...] = ()) -> Prepared:
    """Prompt text or chat messages -> tokens (checked against the context) and sampling params."""
    engine = _open_engine(request)
    if messages is not None:
        messages = chat_messages(messages)
    structured = body.get("response_format") is not None or body.get("json_schema") is not None
    # off the loop: a large schema takes a moment to convert
    gbnf = await asyncio.to_thread(grammar_of, body) if structured else None

    def to_tokens() -> list[int]:
        text = engine.render_chat(messages) if messages is not None else prompt
        tokens = engine.tokenize(text, add_bos=True, special=True)
        # A template (or prompt) that writes the BOS token itself must not get a second one.
        bos = engine.tokenize("", add_bos=True, special=True)
        return tokens[1:] if bos and tokens[:2] == bos * 2 else tokens

    try:  # a long prompt takes a while: off the loop, so health checks stay instant
        tokens = await asyncio.to_thread(to_tokens)
    except Exception as e:  # the template's own raise_exception, or a model without template
        if messages is None:
            raise
        raise ApiError(400, "invalid_request", f"messages: {e}")
    if not tokens:
        raise ApiError(400, "invalid_request", "prompt is empty")
    if len(tokens) >= engine.n_ctx:
        raise ApiError(400, "invalid_request",
                       f"prompt is {len(tokens)} tokens; the context holds {engine.n_ctx} "
                       "(prompt plus at least one generated token): shorten it")
    sampling = {k: body[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "min_p",
                                     "repeat_penalty", "frequency_penalty", "presence_penalty",
                                     "seed") if k in body}
    params = SamplingParams(**sampling, stop=stop, grammar=gbnf)
    return Prepared(engine, tokens, params)


def _open_engine(request: web.Request) -> Engine:
    try:
        return request.app[SCHEDULER].check_open()
    except Refused as e:
        raise _refused(e)


def _refused(e: Refused) -> ApiError:
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
    return ApiError(503, e.reason, str(e), headers)


def admit(request: web.Request, prep: Prepared) -> Ticket:
    try:
        ticket = request.app[SCHEDULER].submit(prep.tokens, prep.params)
    except Refused as e:
        raise _refused(e)
    request[TICKET] = ticket
    return ticket


async def open_sse(request: web.Request, ticket: Ticket, *first: bytes) -> web.StreamResponse:
    """Start the text/event-stream reply of an admitted request (proxies pass it unbuffered);
    if the client is already gone, its generation is cancelled."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                       "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        await resp.prepare(request)
        for chunk in first:
            await resp.write(chunk)
    except BaseException:  # ConnectionError, or CancelledError from handler cancellation
        request.app[SCHEDULER].cancel(ticket)
        raise
    request[SSE] = resp
    return resp


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def pump(request: web.Request, ticket: Ticket,
               on_token: Callable[[Token], Awaitable[None]] | None) -> Done | Failed | None:
    """Feed the ticket's events to `on_token` (None: just collect) until the end; send an SSE
    heartbeat comment while nothing else is sent. Returns the final event, or None if the client
    went away (its generation is then cancelled)."""
    scheduler = request.app[SCHEDULER]
    resp = request.get(SSE)
    try:
        async for ev in ticket.events(heartbeat=request.app[CONFIG].heartbeat_interval):
            if ev is HEARTBEAT:
                if resp is not None:
                    await resp.write(b": keep-alive\n\n")
                elif request.transport is None or request.transport.is_closing():
                    return None
            elif isinstance(ev, Token):
                if on_token is not None and ev.text:
                    await on_token(ev)
            else:
                return ev
    except ConnectionError:  # the client closed the stream
        request[CLIENT_GONE] = True
        return None
    finally:
        scheduler.cancel(ticket)  # no-op when finished; otherwise frees the slot
    return None


async def close_stream(request: web.Request, resp: web.StreamResponse,
                       *last: bytes) -> web.StreamResponse:
    """Write the closing events and end the stream; a client already gone is not an error."""
    try:
        for chunk in last:
            await resp.write(chunk)
        await resp.write_eof()
    except ConnectionError:
        request[CLIENT_GONE] = True
    return resp


def usage_timings(ticket: Ticket) -> tuple[dict, dict]:
    done = ticket.end
    prompt = done.prompt_tokens if isinstance(done, Done) else len(ticket.job.prompt_tokens)
    made = done.completion_tokens if isinstance(done, Done) else 0
    return {"prompt_tokens": prompt, "completion_tokens": made}, ticket.timings()


# --- POST /generate ---------------------------------------------------------------------------
async def generate(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, schema.GENERATE)
    if ("prompt" in body) == ("messages" in body):
        raise ApiError(400, "invalid_request", "send exactly one of prompt or messages")
    prep = await prepare(request, body, prompt=body.get("prompt"), messages=body.get("messages"),
                         stop=tuple(body.get("stop", ())))
    ticket = admit(request, prep)
    if not body.get("stream", True):
        return await _generate_json(request, ticket)

    resp = await open_sse(request, ticket)

    async def on_token(tok: Token) -> None:
        await resp.write(sse({"token": tok.text}))

    end = await pump(request, ticket, on_token)
    if end is None:
        return resp
    if isinstance(end, Failed):
        return await close_stream(request, resp, sse(
            {"error": {"type": "internal", "message": end.message}}, "error"))
    usage, timings = usage_timings(ticket)
    return await close_stream(request, resp, sse(
        {"finish_reason": end.finish_reason, "usage": usage, "timings": timings}, "done"))


async def _generate_json(request: web.Request, ticket: Ticket) -> web.Response:
    parts: list[str] = []

    async def on_token(tok: Token) -> None:
        parts.append(tok.text)

    end = await pump(request, ticket, on_token)
    if end is None:
        raise ApiError(499, "cancelled", "client went away")
    if isinstance(end, Failed):
        raise ApiError(500, "internal", end.message)
    usage, timings = usage_timings(ticket)
    return web.json_response({"text": "".join(parts), "finish_reason": end.finish_reason,
                              "usage": usage, "timings": timings})
