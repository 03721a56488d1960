"""The aiohttp app: routes in one place, middlewares, health/readiness/metrics, model loading.

`init_app(config, engine_factory)` builds the app; `engine_factory(config)` is called in a worker
thread once the app starts (it blocks while llama.cpp loads), so /healthz answers 200 and /readyz
503 during the load. Middlewares, outermost first:
  access     request id (echoed or made), X-Served-By, one JSON log line and the request metric
  errors     every failure becomes {"error": {"type", "message"}} with its status; never a bare 500
  body_limit a Content-Length over --max-body-bytes is refused before anything is read
  auth       Bearer key on /generate and /v1/* when a key is configured
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import __version__, openai, schema
from .engine import Done, Engine, warm_up
from .generate import generate
from .metrics import Metrics
from .pipeline import CLIENT_GONE, CONFIG, METRICS, REQUEST_ID, SCHEDULER, TICKET, ApiError, json_error
from .scheduler import Scheduler

log = logging.getLogger("ampere_llm")
access_log = logging.getLogger("ampere_llm.access")

STOP = web.AppKey("stop", asyncio.Future)  # result: exit code; set when the process should end
LOADER = web.AppKey("loader", asyncio.Task)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    reply: str
    body: schema.S | None = None
    body_name: str = ""
    auth: bool = False


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    s = request.app[SCHEDULER]
    body = {"status": s.state.value, "slots_total": s.engine.slots if s.engine else 0,
            "slots_busy": s.busy, "queue_depth": s.queue_depth}
    return web.json_response(body, status=200 if s.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    return web.Response(body=m.render(), headers={"Content-Type": m.content_type})


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(schema.openapi_document(ROUTES, title="ampere-llm-server",
                                                     version=__version__))


ROUTES = (
    Route("POST", "/generate", generate, "Generate text for a prompt or chat messages",
          "text/event-stream: `data: {\"token\"}` per token, `: keep-alive` heartbeats, then "
          "`event: done` {finish_reason, usage, timings} or `event: error` {error}; with "
          "stream=false one JSON {text, finish_reason, usage, timings}",
          schema.GENERATE, "GenerateRequest", auth=True),
    Route("POST", "/v1/chat/completions", openai.chat_completions, "OpenAI chat completion",
          "chat.completion, or chat.completion.chunk events ending with `data: [DONE]`",
          schema.CHAT_COMPLETIONS, "ChatCompletionRequest", auth=True),
    Route("POST", "/v1/completions", openai.completions, "OpenAI text completion",
          "text_completion, or its chunk events ending with `data: [DONE]`",
          schema.COMPLETIONS, "CompletionRequest", auth=True),
    Route("GET", "/v1/models", openai.models, "The model this node serves",
          "{object: list, data: [{id, object: model, created, owned_by}]}", auth=True),
    Route("GET", "/healthz", healthz, "Liveness: 200 while the process runs", "{status}"),
    Route("GET", "/readyz", readyz, "Readiness: 200 when serving; 503 while loading or draining",
          "{status, slots_total, slots_busy, queue_depth}"),
    Route("GET", "/metrics", metrics, "Prometheus metrics", "Prometheus text format"),
    Route("GET", "/openapi.json", openapi_json, "This document", "OpenAPI 3.1"),
)
_AUTH_PATHS = {r.path for r in ROUTES if r.auth}
_ERROR_TYPES = {400: "invalid_request", 401: "unauthorized", 404: "not_found",
                405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
                431: "headers_too_large", 499: "cancelled"}
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
ERROR = web.RequestKey("error", str)  # "type: message" of an error reply, for the log line


@web.middleware
async def access(request: web.Request, handler):
    given = request.headers.get("X-Request-Id", "")
    request[REQUEST_ID] = given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(8)
    t0 = time.monotonic()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except (asyncio.CancelledError, ConnectionError):  # the client went away mid-request
        status = 499
        raise
    finally:
        if request.get(CLIENT_GONE):
            status = 499
        route = request.match_info.route.resource
        label = route.canonical if route is not None else "unmatched"
        request.app[METRICS].requests.labels(label, str(status)).inc()
        _log_line(request, label, status, time.monotonic() - t0)


def _log_line(request: web.Request, route: str, status: int, seconds: float) -> None:
    line: dict[str, Any] = {"id": request[REQUEST_ID], "method": request.method,
                            "route": route, "status": status, "ms": round(seconds * 1000, 1)}
    if ERROR in request:
        line["error"] = request[ERROR][:300]
    ticket = request.get(TICKET)
    if ticket is not None:
        end = ticket.end
        line["tokens_in"] = len(ticket.job.prompt_tokens)
        line["tokens_out"] = end.completion_tokens if isinstance(end, Done) else 0
        line["finish_reason"] = end.finish_reason if isinstance(end, Done) else (
            "error" if end is not None else "cancelled")
        t = ticket.timings()
        line.update(queue_ms=t["queue_ms"], ttft_ms=t["ttft_ms"], tok_s=t["tokens_per_second"])
    # Probes come every few seconds from the load balancer and Prometheus: their successes are
    # logged at debug level only (--log-level debug), so the log stays about requests.
    probe = route in ("/healthz", "/readyz", "/metrics") and status < 400
    access_log.log(logging.DEBUG if probe else logging.INFO, json.dumps(line))


@web.middleware
async def errors(request: web.Request, handler):
    def reply(status: int, type_: str, message: str, headers=None) -> web.Response:
        request[ERROR] = f"{type_}: {message}"
        return json_error(status, type_, message, headers)

    try:
        return await handler(request)
    except ApiError as e:
        return reply(e.status, e.type, e.message, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After")}
        message = e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason
        if e.status == 404:
            message = f"no route {request.method} {request.path} (see /openapi.json)"
        elif e.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        return reply(e.status, _ERROR_TYPES.get(e.status, "http_error"), message, headers)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:  # a bug: log it whole, tell the client little, keep serving
        log.exception("unhandled error in %s %s", request.method, request.path)
        return reply(500, "internal", f"internal error (request id {request[REQUEST_ID]})")


@web.middleware
async def body_limit(request: web.Request, handler):
    limit = request.app[CONFIG].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large",
                       f"body is {request.content_length} bytes; the limit is {limit}")
    return await handler(request)


@web.middleware
async def auth(request: web.Request, handler):
    key = request.app[CONFIG].api_key
    route = request.match_info.route.resource
    if key and route is not None and route.canonical in _AUTH_PATHS:
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 key.encode()):
            raise ApiError(401, "unauthorized",
                           "missing or wrong API key: send Authorization: Bearer <key>",
                           {"WWW-Authenticate": "Bearer"})
    return await handler(request)


async def _stamp_headers(request: web.Request, resp: web.StreamResponse) -> None:
    resp.headers["X-Served-By"] = request.app[CONFIG].node_name
    resp.headers["X-Request-Id"] = request.get(REQUEST_ID, "")


def init_app(config: Any, engine_factory: Callable[[Any], Engine]) -> web.Application:
    """The application for `config` (cli.Config); the engine loads in the background once it
    starts. Call it from a running event loop (as aiohttp's async app factories are)."""
    app = web.Application(middlewares=[access, errors, body_limit, auth],
                          client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[METRICS] = Metrics()
    app[SCHEDULER] = Scheduler(config.max_queue, app[METRICS])
    app[STOP] = asyncio.get_running_loop().create_future()
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler)
    app.on_response_prepare.append(_stamp_headers)
    app.cleanup_ctx.append(_engine_ctx(engine_factory))
    return app


def _engine_ctx(engine_factory: Callable[[Any], Engine]):
    async def ctx(app: web.Application):
        scheduler = app[SCHEDULER]

        async def load() -> None:
            t0 = time.monotonic()
            try:
                engine = await asyncio.to_thread(engine_factory, app[CONFIG])
            except Exception as e:  # noqa: BLE001 - a model llama.cpp refuses: say so, exit 1
                log.error("model failed to load: %s", e)
                scheduler.fail()
                if not app[STOP].done():
                    app[STOP].set_result(1)
                return
            log.info("model %s loaded in %.1f s: %d slot(s), context %d tokens per slot",
                     engine.model_name, time.monotonic() - t0, engine.slots, engine.n_ctx)
            t1 = time.monotonic()
            try:  # ready only once a generation has run: the first user gets warm caches
                done = await asyncio.to_thread(warm_up, engine)
            except Exception as e:  # noqa: BLE001 - a model that cannot generate: say so, exit 1
                log.error("%s", e)
                scheduler.fail()
                await asyncio.to_thread(engine.close)
                if not app[STOP].done():
                    app[STOP].set_result(1)
                return
            if done is None:
                log.warning("warm-up generation unfinished after %.0f s; ready anyway",
                            time.monotonic() - t1)
            else:
                log.info("warm-up generation: %d prompt + %d new tokens in %.2f s",
                         done.prompt_tokens, done.completion_tokens, time.monotonic() - t1)
            scheduler.attach(engine)
            log.info("ready %.1f s after the model load began", time.monotonic() - t0)

        app[LOADER] = asyncio.create_task(load())
        yield
        if not app[LOADER].done():
            app[LOADER].cancel()  # the load thread runs on; the process is exiting anyway
        if scheduler.engine is not None:
            await asyncio.to_thread(scheduler.engine.close)

    return ctx
