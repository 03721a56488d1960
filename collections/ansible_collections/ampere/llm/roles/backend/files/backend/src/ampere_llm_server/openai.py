"""OpenAI-compatible routes (/v1/chat/completions, /v1/completions, /v1/models) on the same scheduler.

Only the wire format differs from /generate (`OpenAIWire`): the same validation, admission,
heartbeat, cancellation and errors (pipeline.py) run underneath, so the official `openai`
client, LangChain, LiteLLM and curl scripts written for OpenAI work against a node unchanged. One model per node: the
request's `model` is accepted and ignored, and replies name the model that actually answered.
Which OpenAI fields are implemented, accepted without effect, or refused unless harmless is
declared with the bodies (schema.CHAT_COMPLETIONS, COMPLETIONS) and so in /openapi.json.
"""
from __future__ import annotations

import time
from pathlib import Path

from aiohttp import web

from . import schema
from .engine import Done
from .pipeline import CONFIG, REQUEST_ID, SCHEDULER, ApiError, prepare, read_body, respond, sse, usage_timings
from .scheduler import Ticket


def model_name(request: web.Request) -> str:
    engine = request.app[SCHEDULER].engine
    if engine is not None:
        return engine.model_name
    return Path(request.app[CONFIG].model).name.removesuffix(".gguf")  # while loading


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{
        "id": model_name(request), "object": "model", "created": int(request.app[CONFIG].started),
        "owned_by": "ampere-llm"}]})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, schema.CHAT_COMPLETIONS)
    return await _complete(request, body, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, schema.COMPLETIONS)
    return await _complete(request, body, chat=False)


async def _complete(request: web.Request, body: dict, chat: bool) -> web.StreamResponse:
    if "max_completion_tokens" in body:
        body["max_tokens"] = body["max_completion_tokens"]
    stop = body.get("stop", ())
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if chat:
        prep = await prepare(request, body, messages=body["messages"], stop=stop)
    else:
        prompt = body["prompt"]
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, "invalid_request", "prompt: send one string")
            prompt = prompt[0]
        prep = await prepare(request, body, prompt=prompt, stop=stop)
    include_usage = bool(body.get("stream") and (body.get("stream_options") or {}).get("include_usage"))
    wire = OpenAIWire(chat, request[REQUEST_ID], model_name(request), include_usage)
    return await respond(request, prep, wire, stream=bool(body.get("stream")))


class OpenAIWire:
    """chat.completion(.chunk) or text_completion: chunks as `data:` events ending with [DONE]."""

    def __init__(self, chat: bool, request_id: str, model: str, include_usage: bool) -> None:
        self.chat = chat
        self.common = {"id": ("chatcmpl-" if chat else "cmpl-") + request_id,
                       "object": "chat.completion.chunk" if chat else "text_completion",
                       "created": int(time.time()), "model": model}
        if include_usage:
            self.common["usage"] = None  # as OpenAI: null in every chunk but the last

    def _choice(self, text: str | None, finish: str | None, first: bool = False) -> dict:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta = {} if text is None else {"content": text}
        if first:
            delta["role"] = "assistant"
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def _chunk(self, text: str | None, finish: str | None = None, first: bool = False) -> bytes:
        return sse({**self.common, "choices": [self._choice(text, finish, first)]})

    def opening(self) -> list[bytes]:
        # OpenAI opens a chat stream with the assistant role and no text
        return [self._chunk("", first=True)] if self.chat else []

    def token(self, text: str) -> bytes:
        return self._chunk(text)

    def done(self, ticket: Ticket, end: Done) -> list[bytes]:
        last = [self._chunk(None, end.finish_reason)]
        if "usage" in self.common:
            last.append(sse({**self.common, "choices": [], "usage": _usage(ticket)}))
        return last + [DONE]

    def failed(self, message: str) -> list[bytes]:
        return [sse({"error": {"type": "internal", "message": message}}), DONE]

    def reply(self, ticket: Ticket, text: str, end: Done) -> web.Response:
        if self.chat:
            out = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                   "logprobs": None, "finish_reason": end.finish_reason}
        else:
            out = self._choice(text, end.finish_reason)
        return web.json_response({**self.common,
                                  "object": "chat.completion" if self.chat else "text_completion",
                                  "choices": [out], "usage": _usage(ticket)})


DONE = b"data: [DONE]\n\n"


def _usage(ticket: Ticket) -> dict:
    usage, _ = usage_timings(ticket)
    return {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
