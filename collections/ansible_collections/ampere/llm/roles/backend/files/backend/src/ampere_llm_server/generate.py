"""POST /generate: its body and its wire format; the request itself goes through pipeline.py.

Streamed: `data: {"token"}` per piece of text, then `event: done` {finish_reason, usage, timings}
or `event: error` {error}. Not streamed: one JSON {text, finish_reason, usage, timings}.
"""
from __future__ import annotations

from aiohttp import web

from . import schema
from .engine import Done
from .pipeline import ApiError, prepare, read_body, respond, sse, usage_timings
from .scheduler import Ticket


class GenerateWire:
    def opening(self) -> list[bytes]:
        return []

    def token(self, text: str) -> bytes:
        return sse({"token": text})

    def done(self, ticket: Ticket, end: Done) -> list[bytes]:
        usage, timings = usage_timings(ticket)
        return [sse({"finish_reason": end.finish_reason, "usage": usage, "timings": timings},
                    "done")]

    def failed(self, message: str) -> list[bytes]:
        return [sse({"error": {"type": "internal", "message": message}}, "error")]

    def reply(self, ticket: Ticket, text: str, end: Done) -> web.Response:
        usage, timings = usage_timings(ticket)
        return web.json_response({"text": text, "finish_reason": end.finish_reason,
                                  "usage": usage, "timings": timings})


async def generate(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, schema.GENERATE)
    if ("prompt" in body) == ("messages" in body):
        raise ApiError(400, "invalid_request", "send exactly one of prompt or messages")
    prep = await prepare(request, body, prompt=body.get("prompt"), messages=body.get("messages"),
                         stop=tuple(body.get("stop", ())))
    return await respond(request, prep, GenerateWire(), stream=body.get("stream", True))
