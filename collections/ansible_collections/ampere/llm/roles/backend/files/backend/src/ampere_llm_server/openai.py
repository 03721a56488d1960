"""OpenAI-compatible routes (/v1/chat/completions, /v1/completions, /v1/models) on the same scheduler.

Only the wire format differs from /generate: the same validation, admission, heartbeat and
cancellation (generate.py) run underneath, so the official `openai` client, LangChain, LiteLLM
and curl scripts written for OpenAI work against a node unchanged. One model per node: the
request's `model` is accepted and ignored, and replies name the model that actually answered.
Which OpenAI fields are implemented, accepted without effect, or refused unless harmless is
declared with the bodies (schema.CHAT_COMPLETIONS, COMPLETIONS) and so in /openapi.json.
"""
from __future__ import annotations

import time
from pathlib import Path

from aiohttp import web

from . import schema
from .engine import Failed, Token
from .generate import (CONFIG, REQUEST_ID, SCHEDULER, ApiError, admit, close_stream, open_sse,
                       prepare, pump, read_body, sse, usage_timings)


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
    ticket = admit(request, prep)

    rid = request[REQUEST_ID]
    common = {"id": ("chatcmpl-" if chat else "cmpl-") + rid,
              "object": "chat.completion.chunk" if chat else "text_completion",
              "created": int(time.time()), "model": model_name(request)}

    def choice(text: str | None, finish: str | None, first: bool = False) -> dict:
        if not chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta = {} if text is None else {"content": text}
        if first:
            delta["role"] = "assistant"
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    if body.get("stream"):
        if (body.get("stream_options") or {}).get("include_usage"):
            common["usage"] = None  # as OpenAI: null in every chunk but the last
        # OpenAI opens a chat stream with the assistant role and no text
        first = [sse({**common, "choices": [choice("", None, first=True)]})] if chat else []
        resp = await open_sse(request, ticket, *first)

        async def on_token(tok: Token) -> None:
            await resp.write(sse({**common, "choices": [choice(tok.text, None)]}))

        end = await pump(request, ticket, on_token)
        if end is None:
            return resp
        if isinstance(end, Failed):
            last = [sse({"error": {"type": "internal", "message": end.message}})]
        else:
            last = [sse({**common, "choices": [choice(None, end.finish_reason)]})]
            if "usage" in common:
                last.append(sse({**common, "choices": [], "usage": _usage(ticket)}))
        return await close_stream(request, resp, *last, b"data: [DONE]\n\n")

    parts: list[str] = []

    async def collect(tok: Token) -> None:
        parts.append(tok.text)

    end = await pump(request, ticket, collect)
    if end is None:
        raise ApiError(499, "cancelled", "client went away")
    if isinstance(end, Failed):
        raise ApiError(500, "internal", end.message)
    text = "".join(parts)
    if chat:
        out = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
               "logprobs": None, "finish_reason": end.finish_reason}
    else:
        out = choice(text, end.finish_reason)
    return web.json_response({**common, "object": "chat.completion" if chat else "text_completion",
                              "choices": [out], "usage": _usage(ticket)})


def _usage(ticket) -> dict:
    usage, _ = usage_timings(ticket)
    return {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
