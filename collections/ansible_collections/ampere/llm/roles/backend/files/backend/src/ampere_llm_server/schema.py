"""Request bodies, defined once: the validator and the OpenAPI document are made from them.

A body is parsed strictly (UTF-8, JSON without NaN/Infinity, bounded nesting; the validator recurses only as deep as
the schema) and checked against
its schema; the first problem becomes a 400 that names the field (`messages[2].content: expected a
string, got integer`). `null` for an optional field means "not given", as OpenAI clients send it.
Unknown-field policy: /generate rejects fields it does not know (a typo such as `max_token` would
otherwise be silently ignored); the OpenAI routes ignore fields OpenAI does not define, and
declare every one it does: implemented, accepted with no effect on one local model (`user`,
`metadata`, ...), or taken only with its harmless value (`n`: 1, `logprobs`: false, `tools`: [])
and refused with a 400 that says why otherwise (`S.accept`).

Hand-written, not pydantic: one 60-line walk gives the 400 messages clients and tests rely on (the
field path, "expected string, got integer", null as not given, harmless-value-only fields refused
with their reason) and the OpenAPI text from the same definitions; pydantic (measured: +0.2 s
startup, 2 us against 4 us a body, noise beside one token) would need a translation layer for each
of those larger than this validator, and pydantic-core's compiled wheels in the node's lock.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
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
    items: S | None = None
    properties: dict[str, S] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    extra: bool = False                         # objects: unknown keys allowed (and ignored);
    #                                             with no properties: any object, kept as it is
    accept: tuple | None = None                 # the only values taken; others: 400 `refuse`
    refuse: str = ""                            # why other values cannot be honoured


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
    if s.accept is not None and not any(_same(value, a) for a in s.accept):
        raise Invalid(path, f"{s.refuse} ({_accepted(s)})")
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
            raise Invalid(path, "contains an unpaired surrogate (\\ud800-\\udfff): not valid text") from None
    elif t == "array":
        if s.min_items is not None and len(value) < s.min_items:
            raise Invalid(path, f"needs at least {s.min_items} item(s)")
        if s.max_items is not None and len(value) > s.max_items:
            raise Invalid(path, f"has {len(value)} items; at most {s.max_items}")
        if s.items is not None:
            value = [validate(v, s.items, f"{path}[{i}]") for i, v in enumerate(value)]
    elif t == "object":
        if s.extra and not s.properties:
            return value
        out = {}
        for k in s.required:
            if value.get(k) is None:
                raise Invalid(_join(path, k), "is required")
        for k, v in value.items():
            if k in s.properties:
                if v is None and not _takes_null(s.properties[k]):
                    continue                    # null: not given
                out[k] = validate(v, s.properties[k], _join(path, k))
            elif not s.extra:
                known = ", ".join(s.properties)
                raise Invalid(_join(path, k), f"unknown field (known: {known})")
        return out
    return value


def _takes_null(s: S) -> bool:
    return s.type == "null" or (not isinstance(s.type, str) and "null" in s.type)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1.0 is 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


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
    if s.accept is not None:
        out["description"] = " ".join(x for x in (s.description, f"{s.refuse}: "
                                                  f"{_accepted(s)}.") if x)
    if s.items is not None and isinstance(s.type, str):
        out["items"] = to_openapi(s.items)
    if s.properties:
        out["properties"] = {k: to_openapi(v) for k, v in s.properties.items()}
        out["additionalProperties"] = s.extra
    elif s.type == "object" and s.extra:
        out["additionalProperties"] = True
    if s.required:
        out["required"] = list(s.required)
    return out


def _accepted(s: S) -> str:
    return "only " + " or ".join([json.dumps(a) for a in s.accept] + ["null"]) + " is accepted"


# --- the bodies -------------------------------------------------------------------------------
PART = S("object", "A part of a message's content: only text parts are read (others: 400)",
         properties={"type": S("string", "text"), "text": S("string", "The text")},
         required=("type",), extra=True)
_NO_TOOLS = "this server does not call tools or functions"
MESSAGE = S("object", "One chat turn", properties={
    "role": S("string", "Who speaks; developer is read as system; tool and function are refused "
              f"({_NO_TOOLS})", enum=("system", "developer", "user", "assistant", "tool",
                                      "function")),
    "content": S(("string", "array"), "The text of the turn, or an array of text parts "
                 "(joined with newlines, in order)", items=PART, max_items=1000),
    "name": S("string", "The speaker's name: passed to the chat template, which uses it or not "
              "(SmolLM2's and most templates do not)"),
    "refusal": S("string", "An assistant's earlier refusal: read as its content when content is "
                 "absent"),
    "tool_calls": S("array", "Only [] is accepted", accept=([],), refuse=_NO_TOOLS),
    "tool_call_id": S("string", "Goes with role tool, which is refused"),
    "function_call": S("object", "Only null", extra=True, accept=(), refuse=_NO_TOOLS),
    "audio": S("object", "Only null", extra=True, accept=(),
               refuse="this model reads and writes text only"),
}, required=("role",))
MESSAGES = S("array", "The conversation; rendered with the model's own chat template",
             items=MESSAGE, min_items=1, max_items=1000)
# The OpenAI routes ignore message fields OpenAI does not define (/generate refuses them).
OPENAI_MESSAGES = replace(MESSAGES, items=replace(MESSAGE, extra=True))

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
    "frequency_penalty": S("number", "Lowers a token's logit by this x its count among the last "
                           "64 generated tokens (OpenAI's, over a window)",
                           default=_D.frequency_penalty, minimum=-2, maximum=2),
    "presence_penalty": S("number", "Lowers the logit of every token among the last 64 generated "
                          "tokens by this (OpenAI's, over a window)", default=_D.presence_penalty,
                          minimum=-2, maximum=2),
    # 2**32 - 1 is llama.cpp's "random seed" value, so it is not a seed one could repeat.
    "seed": S("integer", "Same seed, same prompt, same parameters: same text", minimum=0,
              maximum=2**32 - 2),
}
STOP_STRING = S("string", "A stop string", max_length=256)

_STRUCTURED = ("The answer is constrained by a grammar: it parses whenever finish_reason is "
               "stop (at max_tokens it may be cut short: finish_reason length). Not with stop "
               "strings. Schema keywords the grammar cannot enforce (minimum, not, uniqueItems, "
               "...) are a 400 naming them; annotations (title, description, format, ...) are "
               "fine")
JSON_SCHEMA = S("object", "A JSON Schema the answer must match. " + _STRUCTURED, extra=True)
RESPONSE_FORMAT = S("object", "text (default), json_object (any JSON object) or json_schema. "
                    + _STRUCTURED, properties={
                        "type": S("string", enum=("text", "json_object", "json_schema")),
                        "json_schema": S("object", "With type json_schema", properties={
                            "name": S("string", "The schema's name (not used)"),
                            "description": S("string", "Not used"),
                            "schema": replace(JSON_SCHEMA, description="The schema (default: any "
                                              "JSON object)"),
                            "strict": S("boolean", "Any value: the schema is always enforced"),
                        }, extra=True),
                    }, required=("type",))

GENERATE = S("object", "Exactly one of prompt or messages, plus sampling parameters", properties={
    "prompt": S("string", "Raw text to continue"),
    "messages": MESSAGES,
    **SAMPLING,
    "stop": S("array", "Generation ends before any of these strings (not included)",
              items=STOP_STRING, max_items=16),
    "stream": S("boolean", "text/event-stream of tokens (true) or one JSON reply (false)",
                default=True),
    "json_schema": JSON_SCHEMA,
    "response_format": RESPONSE_FORMAT,
})


def _unused(what: str) -> S:
    return S(("string", "number", "boolean", "object", "array"),
             f"Accepted, not used: {what}", extra=True)


def _refused(type_, accept: tuple, why: str) -> S:
    anything = S(("string", "number", "boolean", "object", "array"), extra=True)
    return S(type_, "", accept=accept, refuse=why, extra=True,
             items=anything if type_ == "array" else None)


_OPENAI_COMMON = {
    "model": S("string", "Accepted, not used: a node serves one model (see GET /v1/models)"),
    **SAMPLING,
    "temperature": S("number", "0 is greedy (deterministic)", default=_D.temperature, minimum=0,
                     maximum=2),
    "stop": S(("string", "array"), "Up to 16 stop strings", items=STOP_STRING, max_length=256,
              max_items=16),
    "stream": S("boolean", "Server-sent chunks ending with `data: [DONE]`", default=False),
    "stream_options": S("object", "Streaming options", properties={
        "include_usage": S("boolean", "Send a last chunk with usage (and `usage: null` in the "
                           "others)")}, extra=True),
    "response_format": RESPONSE_FORMAT,
    "n": _refused("integer", (1,), "one choice per request: send n requests for n answers"),
    "logit_bias": _refused("object", ({},), "logit_bias is not supported"),
    "user": _unused("an end-user id for OpenAI's abuse monitoring"),
    "metadata": _unused("OpenAI's stored-completion tags"),
    "service_tier": _unused("one node, one tier"),
    "prompt_cache_key": _unused("prefix reuse is automatic"),
    "safety_identifier": _unused("an end-user id for OpenAI's abuse monitoring"),
}
_REFUSED_CHAT = {
    "logprobs": _refused("boolean", (False,), "log probabilities are not returned"),
    "top_logprobs": _refused("integer", (0,), "log probabilities are not returned"),
    "tools": _refused("array", ([],), _NO_TOOLS),
    "tool_choice": _refused(("string", "object"), ("none", "auto"), _NO_TOOLS),
    "parallel_tool_calls": _unused("there are no tools"),
    "functions": _refused("array", ([],), _NO_TOOLS),
    "function_call": _refused(("string", "object"), ("none", "auto"), _NO_TOOLS),
    "store": _refused("boolean", (False,), "completions are not stored"),
    "audio": _refused("object", (), "this model reads and writes text only"),
    "modalities": _refused("array", (["text"],), "this model reads and writes text only"),
    "prediction": _refused("object", (), "predicted outputs are not supported"),
    "web_search_options": _refused("object", (), "this server does not search the web"),
    "reasoning_effort": _refused("string", (), "this model does not reason in a separate phase"),
    "verbosity": _refused("string", (), "not supported: say it in the prompt"),
}
CHAT_COMPLETIONS = S("object", "OpenAI chat completion request. Implemented: messages (text and "
                     "text parts; developer read as system; name passed to the template), "
                     "max_tokens, max_completion_tokens, temperature, top_p, frequency_penalty, "
                     "presence_penalty, seed, stop, stream, stream_options.include_usage, "
                     "response_format (json_object, json_schema); extensions: top_k, min_p, "
                     "repeat_penalty. Accepted and not used: model, user, metadata, "
                     "service_tier, prompt_cache_key, safety_identifier, parallel_tool_calls. "
                     "Refused unless harmless (a 400 that says why): n > 1, logprobs, "
                     "top_logprobs, tools, tool_choice, functions, function_call, logit_bias, "
                     "store, audio, modalities other than text, prediction, web_search_options, "
                     "reasoning_effort, verbosity. null means not given; fields OpenAI does not "
                     "define are ignored.",
                     properties={"messages": OPENAI_MESSAGES, **_OPENAI_COMMON, **_REFUSED_CHAT,
                                 "max_completion_tokens": S("integer", "Alias of max_tokens",
                                                            minimum=1, maximum=1 << 20)},
                     required=("messages",), extra=True)
COMPLETIONS = S("object", "OpenAI (legacy) completion request. Implemented: prompt, max_tokens, "
                "temperature, top_p, frequency_penalty, presence_penalty, seed, stop, stream, "
                "stream_options.include_usage; extensions: response_format (as on chat), top_k, "
                "min_p, repeat_penalty. Accepted and not used: model, user, metadata, "
                "service_tier, prompt_cache_key, safety_identifier. Refused unless harmless: "
                "n > 1, best_of > 1, echo, logprobs, logit_bias, suffix. null means not given; "
                "fields OpenAI does not define are ignored.",
                properties={"prompt": S(("string", "array"), "The prompt (an array must hold one "
                                        "string)", items=S("string"), max_items=1),
                            **_OPENAI_COMMON,
                            "best_of": _refused("integer", (1,), "one candidate per request"),
                            "echo": _refused("boolean", (False,), "the prompt is not echoed"),
                            "logprobs": _refused("integer", (), "log probabilities are not "
                                                 "returned"),
                            "suffix": _refused("string", ("",), "text after the insertion point "
                                               "is not supported")},
                required=("prompt",), extra=True)

ERROR_REPLY = S("object", "Every error reply", properties={"error": S("object", properties={
    "type": S("string", "invalid_request | unauthorized | not_found | method_not_allowed | unsupported_media_type | "
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
    schemas["Error"] = to_openapi(ERROR_REPLY)
    return {"openapi": "3.1.0", "info": {"title": title, "version": version}, "paths": paths,
            "components": {"schemas": schemas, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "Only when the node has an API key"}}}}
