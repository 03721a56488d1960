"""Request bodies, defined once: the validator and the OpenAPI document are made from them.

A body is parsed strictly (UTF-8, JSON without NaN/Infinity, bounded nesting; the validator recurses only as deep as
the schema) and checked against
its schema; the first problem becomes a 400 that names the field (`messages[2].content: expected a
string, got integer`). Unknown-field policy: /generate rejects fields it does not know (a typo
such as `max_token` would otherwise be silently ignored); the OpenAI routes ignore them, because
OpenAI clients send fields this server does not implement (`user`, `logprobs`: false, ...).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .engine import SamplingParams

_D = SamplingParams()  # the defaults, stated once
class Invalid(Exception):
    """A 400: `path` names the field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)


@dataclass(frozen=True)
class S:
    """A JSON schema node (the subset this service needs)."""
    type: str | tuple[str, ...]      # "string" "integer" "number" "boolean" "array" "object"
    description: str = ""
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    min_items: int | None = None
    max_items: int | None = None
    max_length: int | None = None
    enum: tuple | None = None
    items: "S | None" = None
    properties: dict[str, "S"] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    extra: bool = False                         # objects: unknown keys allowed (and ignored)


_PY = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
       "array": list, "object": dict, "null": type(None)}


def _type_name(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object", type(None): "null"}.get(type(v), type(v).__name__)


def validate(value: Any, s: S, path: str = "") -> Any:
    types = (s.type,) if isinstance(s.type, str) else s.type
    ok = [t for t in types if isinstance(value, _PY[t])
          and not (isinstance(value, bool) and t in ("integer", "number"))]
    if not ok:
        raise Invalid(path, f"expected {' or '.join(types)}, got {_type_name(value)}")
    t = ok[0]
    if s.enum is not None and value not in s.enum:
        raise Invalid(path, f"must be one of {', '.join(map(str, s.enum))}")
    if t in ("integer", "number"):
        if isinstance(value, float) and not math.isfinite(value):
            raise Invalid(path, "must be a finite number")
        if s.minimum is not None and value < s.minimum:
            raise Invalid(path, f"must be >= {s.minimum}")
        if s.maximum is not None and value > s.maximum:
            raise Invalid(path, f"must be <= {s.maximum}")
    elif t == "string":
        if s.max_length is not None and len(value) > s.max_length:
            raise Invalid(path, f"longer than {s.max_length} characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Invalid(path, "contains an unpaired surrogate (\\ud800-\\udfff): not valid text")
    elif t == "array":
        if s.min_items is not None and len(value) < s.min_items:
            raise Invalid(path, f"needs at least {s.min_items} item(s)")
        if s.max_items is not None and len(value) > s.max_items:
            raise Invalid(path, f"more than {s.max_items} items")
        if s.items is not None:
            value = [validate(v, s.items, f"{path}[{i}]") for i, v in enumerate(value)]
    elif t == "object":
        out = {}
        for k in s.required:
            if k not in value:
                raise Invalid(_join(path, k), "is required")
        for k, v in value.items():
            if k in s.properties:
                out[k] = validate(v, s.properties[k], _join(path, k))
            elif not s.extra:
                known = ", ".join(s.properties)
                raise Invalid(_join(path, k), f"unknown field (known: {known})")
        return out
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def parse_json(raw: bytes) -> Any:
    """Bytes -> JSON value, or Invalid saying why not."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Invalid("", f"body is not valid UTF-8 (byte {e.start})") from None
    def no_constants(name: str):
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(text, parse_constant=no_constants)
    except RecursionError:  # json's C decoder guards its own recursion: deep nesting lands here
        raise Invalid("", "body is not valid JSON: nested too deeply") from None
    except ValueError as e:
        raise Invalid("", f"body is not valid JSON: {e}") from None


def to_openapi(s: S) -> dict:
    out: dict[str, Any] = {}
    if isinstance(s.type, str):
        out["type"] = s.type
    else:
        out["anyOf"] = [{"type": t} if t != "array" or s.items is None
                        else {"type": "array", "items": to_openapi(s.items)} for t in s.type]
    for key, val in (("description", s.description), ("default", s.default),
                     ("minimum", s.minimum), ("maximum", s.maximum), ("minItems", s.min_items),
                     ("maxItems", s.max_items), ("maxLength", s.max_length)):
        if val not in (None, ""):
            out[key] = val
    if s.enum is not None:
        out["enum"] = list(s.enum)
    if s.items is not None and isinstance(s.type, str):
        out["items"] = to_openapi(s.items)
    if s.properties:
        out["properties"] = {k: to_openapi(v) for k, v in s.properties.items()}
        out["additionalProperties"] = s.extra
    if s.required:
        out["required"] = list(s.required)
    return out


# --- the bodies -------------------------------------------------------------------------------
MESSAGE = S("object", "One chat turn", properties={
    "role": S("string", "Who speaks", enum=("system", "user", "assistant")),
    "content": S("string", "The text of the turn"),
}, required=("role", "content"))
MESSAGES = S("array", "The conversation; rendered with the model's own chat template",
             items=MESSAGE, min_items=1, max_items=1000)

SAMPLING = {
    "max_tokens": S("integer", "Most tokens to generate", default=_D.max_tokens, minimum=1,
                    maximum=1 << 20),
    "temperature": S("number", "0 is greedy (deterministic)", default=_D.temperature, minimum=0,
                     maximum=5),
    "top_p": S("number", "Nucleus sampling", default=_D.top_p, minimum=0, maximum=1),
    "top_k": S("integer", "Sample among the k most likely tokens (0: all)", default=_D.top_k,
               minimum=0, maximum=100_000),
    "min_p": S("number", "Drop tokens less likely than min_p x the best one", default=_D.min_p,
               minimum=0, maximum=1),
    "repeat_penalty": S("number", "Penalty for repeating recent tokens (1: none)",
                        default=_D.repeat_penalty, minimum=0, maximum=10),
    # 2**32 - 1 is llama.cpp's "random seed" value, so it is not a seed one could repeat.
    "seed": S("integer", "Same seed, same prompt, same parameters: same text", minimum=0,
              maximum=2**32 - 2),
}
STOP_STRING = S("string", "A stop string", max_length=256)

GENERATE = S("object", "Exactly one of prompt or messages, plus sampling parameters", properties={
    "prompt": S("string", "Raw text to continue"),
    "messages": MESSAGES,
    **SAMPLING,
    "stop": S("array", "Generation ends before any of these strings (not included)",
              items=STOP_STRING, max_items=16),
    "stream": S("boolean", "text/event-stream of tokens (true) or one JSON reply (false)",
                default=True),
})

_OPENAI_COMMON = {
    "model": S("string", "Ignored: a node serves one model (see GET /v1/models)"),
    **SAMPLING,
    "temperature": S("number", "0 is greedy (deterministic)", default=_D.temperature, minimum=0,
                     maximum=2),
    "stop": S(("string", "array"), "Up to 16 stop strings", items=STOP_STRING, max_length=256,
              max_items=16),
    "n": S("integer", "Number of choices: only 1 is supported", default=1, minimum=1, maximum=1),
    "stream": S("boolean", "Server-sent chunks ending with `data: [DONE]`", default=False),
    "stream_options": S("object", "Streaming options", properties={
        "include_usage": S("boolean", "Send a last chunk with usage")}, extra=True),
}
CHAT_COMPLETIONS = S("object", "OpenAI chat completion request (fields not listed are ignored)",
                     properties={"messages": MESSAGES, **_OPENAI_COMMON,
                                 "max_completion_tokens": S("integer", "Alias of max_tokens",
                                                            minimum=1, maximum=1 << 20)},
                     required=("messages",), extra=True)
COMPLETIONS = S("object", "OpenAI completion request (fields not listed are ignored)",
                properties={"prompt": S(("string", "array"), "The prompt (an array must hold one "
                                        "string)", items=S("string"), max_items=1),
                            **_OPENAI_COMMON},
                required=("prompt",), extra=True)

ERROR = S("object", "Every error reply", properties={"error": S("object", properties={
    "type": S("string", "invalid_request | unauthorized | not_found | method_not_allowed | "
              "payload_too_large | overloaded | not_ready | draining | internal"),
    "message": S("string", "What went wrong and, when it can be fixed, how")})})


def openapi_document(routes, *, title: str, version: str) -> dict:
    """The OpenAPI 3.1 document for `routes` (app.ROUTES): path, method, summary, body, replies."""
    paths: dict[str, dict] = {}
    for r in routes:
        op: dict[str, Any] = {"summary": r.summary, "responses": {
            "200": {"description": r.reply},
            "default": {"description": "Error", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{r.body_name}"}}}}
        if r.auth:
            op["security"] = [{"bearer": []}]
        paths.setdefault(r.path, {})[r.method.lower()] = op
    schemas = {r.body_name: to_openapi(r.body) for r in routes if r.body is not None}
    schemas["Error"] = to_openapi(ERROR)
    return {"openapi": "3.1.0", "info": {"title": title, "version": version}, "paths": paths,
            "components": {"schemas": schemas, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "Only when the node has an API key"}}}}
