"""One request's pipeline, for every generating route: admit -> run -> stream; routes add a wire format.

Before admission: body -> validated dict (schema.py) -> chat messages read as the template wants
them (text parts, developer) -> prompt tokens (checked against the context) -> SamplingParams,
with the grammar of a structured format (grammar.py). Then `respond` does the rest the same way
for /generate and the OpenAI routes: admission (scheduler.py; a full queue or a drain is a 503
with Retry-After), the run, and the reply, either server-sent events with a heartbeat comment
while nothing else is sent, or one JSON reply once the run has ended. A route only says how its
events and its reply look (a `Wire`). A client that goes away cancels its generation: aiohttp
cancels the handler (handler_cancellation), or the next write fails; either way the scheduler is
told (the `finally` in `_run`). Errors before the stream opens are ApiErrors, which the errors
middleware (app.py) turns into JSON with their status; a failure after it opened is the wire's
error event.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

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
    """The request's JSON body checked against `spec`; ApiError 400/413/415 otherwise."""
    try:
        # A declared Content-Length over the limit was refused by the body_limit middleware;
        # aiohttp stops reading at client_max_size for chunked bodies too.
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "payload_too_large",
                       f"body is over the limit of {request.app[CONFIG].max_body_bytes} bytes") from None
    except web.RequestPayloadError:  # aiohttp could not read it, e.g. gzip that does not inflate
        encoding = request.headers.get("Content-Encoding", "none")
        raise ApiError(400, "invalid_request", f"body cannot be read (Content-Encoding: {encoding}): "
                       "send it uncompressed") from None
    # A body declared as something else (a form, text: what an HTML form or curl -d without -H sends)
    # is refused; none (aiohttp reads it as octet-stream) is read as JSON.
    ctype = request.content_type
    if ctype not in ("application/json", "application/octet-stream") and not ctype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {ctype} is not JSON: send the body as Content-Type: application/json")
    try:
        return schema.validate(schema.parse_json(raw), spec)
    except schema.Invalid as e:
        raise ApiError(400, "invalid_request", str(e)) from e


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
        raise ApiError(400, "invalid_request", f"{where}: {e}") from e


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
        raise ApiError(400, "invalid_request", f"messages: {e}") from e
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
        raise _refused(e) from e


def _refused(e: Refused) -> ApiError:
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
    return ApiError(503, e.reason, str(e), headers)


def _admit(request: web.Request, prep: Prepared) -> Ticket:
    try:
        ticket = request.app[SCHEDULER].submit(prep.tokens, prep.params)
    except Refused as e:
        raise _refused(e) from e
    request[TICKET] = ticket
    return ticket


class Wire(Protocol):
    """How one route's replies look; `respond` decides when each piece is sent."""

    def opening(self) -> list[bytes]:
        """Events sent as the stream opens, before any token."""

    def token(self, text: str) -> bytes:
        """The event of one piece of text."""

    def done(self, ticket: Ticket, end: Done) -> list[bytes]:
        """The closing events of a finished run."""

    def failed(self, message: str) -> list[bytes]:
        """The closing events of a run the engine could not finish."""

    def reply(self, ticket: Ticket, text: str, end: Done) -> web.Response:
        """The one JSON reply of a run that was not streamed."""


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def usage_timings(ticket: Ticket) -> tuple[dict, dict]:
    done = ticket.end
    prompt = done.prompt_tokens if isinstance(done, Done) else len(ticket.job.prompt_tokens)
    made = done.completion_tokens if isinstance(done, Done) else 0
    return {"prompt_tokens": prompt, "completion_tokens": made}, ticket.timings()


async def respond(request: web.Request, prep: Prepared, wire: Wire,
                  stream: bool) -> web.StreamResponse:
    """Admit the prepared request, run it, and reply in `wire`'s format: streamed as server-sent
    events, or as one JSON reply (a client gone meanwhile is a 499, an engine failure a 500)."""
    ticket = _admit(request, prep)
    if not stream:
        parts: list[str] = []

        async def collect(text: str) -> None:
            parts.append(text)

        end = await _run(request, ticket, None, collect)
        if end is None:
            raise ApiError(499, "cancelled", "client went away")
        if isinstance(end, Failed):
            raise ApiError(500, "internal", end.message)
        return wire.reply(ticket, "".join(parts), end)

    resp = await _open_sse(request, ticket, wire.opening())

    spent = request.app[METRICS].loop_seconds

    async def send(text: str) -> None:
        t0 = time.perf_counter()
        await resp.write(wire.token(text))
        spent["sse"] += time.perf_counter() - t0

    end = await _run(request, ticket, resp, send)
    if end is None:
        return resp
    return await _close_sse(request, resp, wire.failed(end.message) if isinstance(end, Failed)
                            else wire.done(ticket, end))


async def _open_sse(request: web.Request, ticket: Ticket,
                    first: list[bytes]) -> web.StreamResponse:
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
    return resp


async def _run(request: web.Request, ticket: Ticket, resp: web.StreamResponse | None,
               on_text: Callable[[str], Awaitable[None]]) -> Done | Failed | None:
    """Feed the ticket's text to `on_text` until the end; while nothing else is sent, write a
    heartbeat comment to the stream `resp`, or (no stream) look whether the client is still
    there. Returns the final event, or None if the client went away (its generation is then
    cancelled)."""
    try:
        async for ev in ticket.events(heartbeat=request.app[CONFIG].heartbeat_interval):
            if ev is HEARTBEAT:
                if resp is not None:
                    await resp.write(b": keep-alive\n\n")
                elif request.transport is None or request.transport.is_closing():
                    return None
            elif isinstance(ev, Token):
                if ev.text:
                    await on_text(ev.text)
            else:
                return ev
    except ConnectionError:  # the client closed the stream
        request[CLIENT_GONE] = True
        return None
    finally:
        request.app[SCHEDULER].cancel(ticket)  # no-op when finished; otherwise frees the slot
    return None


async def _close_sse(request: web.Request, resp: web.StreamResponse,
                     last: list[bytes]) -> web.StreamResponse:
    """Write the closing events and end the stream; a client already gone is not an error."""
    try:
        for chunk in last:
            await resp.write(chunk)
        await resp.write_eof()
    except ConnectionError:
        request[CLIENT_GONE] = True
    return resp
