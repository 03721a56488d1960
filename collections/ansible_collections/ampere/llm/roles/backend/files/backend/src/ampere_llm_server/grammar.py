"""Structured output: `response_format` / `json_schema` -> a GBNF grammar for llama.cpp's grammar sampler.

The conversion is llama-cpp-python's own (`llama_cpp.llama_grammar.SchemaConverter`, a port of
llama.cpp's json-schema-to-grammar), with the schema checked first and three fixes (literals
escape backslashes as llama.cpp's converter does; patterns are spelled for GBNF and kept to what a
JSON string holds unescaped, `_json_safe_pattern`; and the string rule below):

- A JSON string may not hold raw control characters (json.loads refuses them; the converter's
  string rule allows them, so a small model could write raw newlines into a string). Between
  tokens the converter allows one optional space, nothing else: small models under a looser JSON
  grammar fill max_tokens with whitespace, and this bound is what makes a constrained answer end.
- The converter silently skips keywords it does not implement (`minimum`, `not`, `uniqueItems`,
  ...) and, where several apply, keeps one branch (`enum` beside `properties`). An ignored
  keyword could let through output the schema forbids, so `check` walks the schema the way the
  converter does and refuses, with the keyword and where it is, anything that would be ignored.
  Keywords that only annotate (`title`, `description`, `default`, `examples`, unknown ones, and
  `format`, an annotation in JSON Schema 2020-12) are fine: ignoring them cannot make the answer
  wrong. `date`, `time`, `date-time` and `uuid` formats are enforced.

The sampler state itself (one per sequence) is `sampling.Sampler`'s: `new_sampler` makes it.
"""
from __future__ import annotations

import json
import re
from typing import Any

import llama_cpp
from llama_cpp.llama_grammar import BuiltinRule, SchemaConverter

MAX_DEPTH = 32           # nesting of schemas inside schemas
MAX_COUNT = 256          # minItems/maxItems/minLength/maxLength and {m,n} in patterns: the
#                          converter spells repetitions out as nested groups, and llama.cpp's
#                          grammar parser recurses once per group
MAX_GRAMMAR = 256 * 1024  # characters of GBNF

# A JSON string character (RFC 8259): anything but '"', '\\' and control characters, or an escape.
_JSON_CHAR = BuiltinRule(r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})', [])

# JSON Schema keywords that constrain a value (2020-12 and draft 7). A keyword in this set that
# the converter would not enforce where it stands is refused; any other key only annotates.
_CONSTRAINTS = frozenset({
    "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems",
    "maxContains", "minContains", "contains", "maxProperties", "minProperties", "required",
    "dependentRequired", "dependentSchemas", "dependencies", "properties", "patternProperties",
    "additionalProperties", "propertyNames", "items", "prefixItems", "additionalItems",
    "unevaluatedItems", "unevaluatedProperties", "allOf", "anyOf", "oneOf", "not", "if", "then",
    "else", "$ref", "$dynamicRef", "$recursiveRef", "contentSchema"})
_TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4",
                      "uuid5"})
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")

# What the JSON object mode produces: any JSON object.
JSON_OBJECT_SCHEMA = {"type": "object"}


class Unsupported(ValueError):
    """The schema asks for something the grammar cannot enforce (a 400; the message says what)."""


class _Converter(SchemaConverter):
    def _add_primitive(self, name: str, rule: BuiltinRule):
        return super()._add_primitive(name, _JSON_CHAR if name == "char" else rule)

    def _format_literal(self, literal: str) -> str:
        # llama-cpp-python's copy leaves backslashes alone, so GBNF read the escapes of a JSON
        # literal (an enum value "a\\nb", a key with a quote) as its own: llama.cpp's escapes them
        return super()._format_literal(literal.replace("\\", "\\\\"))


def to_gbnf(schema: Any) -> str:
    """A JSON schema -> GBNF text whose every complete sentence is JSON that the schema accepts.
    Raises Unsupported naming the first keyword (and where) that the grammar would not enforce."""
    if not isinstance(schema, dict):
        raise Unsupported("the schema must be a JSON object")
    try:  # a copy: the converter edits $ref too
        schema = _normalize(json.loads(json.dumps(schema)))
    except RecursionError:
        raise Unsupported(f"nested more than {MAX_DEPTH} levels deep") from None
    check(schema)
    converter = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    # resolve_refs does not look inside a node that has a $ref, and pydantic writes a recursive
    # model as {"$ref", "$defs"}: give it the root's keys one level up, then the root itself
    wrapper = {**{k: v for k, v in schema.items() if k != "$ref"}, " root": schema}
    try:
        resolved = converter.resolve_refs(wrapper, "schema")[" root"]
        converter.visit(resolved, "")
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise Unsupported(f"the schema cannot be turned into a grammar: {e}") from None
    gbnf = converter.format_grammar()
    if len(gbnf) > MAX_GRAMMAR:
        raise Unsupported(f"the grammar made from this schema is over {MAX_GRAMMAR} characters")
    sampler = new_sampler(None, gbnf)  # parsed once here, so a bad grammar is a 400, not a crash
    llama_cpp.llama_sampler_free(sampler)
    return gbnf


def new_sampler(vocab, gbnf: str):
    """llama.cpp's grammar sampler for `gbnf` (vocab None: only parse it). Raises Unsupported
    when llama.cpp refuses the grammar (the reason is in the server's log)."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if not sampler:
        raise Unsupported("llama.cpp could not parse the grammar made from this schema")
    return sampler


_ANY_VALUE = {"type": ["object", "array", "string", "number", "boolean", "null"]}
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions")


def _normalize(node: Any, depth: int = 0) -> Any:
    """Two spellings the converter does not read, rewritten to ones it does: a schema with no
    constraint at all (pydantic's `Any`: `{}` or only a title) -> any JSON value; `allOf` of one
    schema and nothing else (older pydantic's way to describe a $ref) -> that schema."""
    if not isinstance(node, dict) or depth > MAX_DEPTH:
        return node                                 # check() reports what is wrong with it
    for key in _SCHEMA_LISTS:
        if isinstance(node.get(key), list):
            node[key] = [_normalize(s, depth + 1) for s in node[key]]
    for key in _SCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            node[key] = {k: _normalize(s, depth + 1) for k, s in node[key].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _normalize(node[key], depth + 1)
        elif key == "items" and isinstance(node.get(key), list):
            node[key] = [_normalize(s, depth + 1) for s in node[key]]
    if isinstance(node.get("pattern"), str):
        node["pattern"] = _json_safe_pattern(node["pattern"])
    constraints = set(node) & _CONSTRAINTS
    if constraints == {"allOf"} and isinstance(node["allOf"], list) and len(node["allOf"]) == 1 \
            and isinstance(node["allOf"][0], dict):
        return {**{k: v for k, v in node.items() if k != "allOf"}, **node["allOf"][0]}
    if not constraints:
        return {**node, **_ANY_VALUE}
    return node


# Code points a JSON string must escape: a pattern applies to the string's value, but the grammar
# writes the JSON text, so the converter's rules for patterns must never produce these raw.
_MUST_ESCAPE = frozenset([0x22, 0x5C, 0x7F, *range(0x20)])
_NOT_THEM = r"\x22\x5C\x00-\x1F\x7F"
# \s is a space only: a tab or newline in the value would need an escape in the JSON text
_CLASSES = {"d": ("0-9", [(0x30, 0x39)]), "w": ("a-zA-Z0-9_", [(0x61, 0x7A), (0x41, 0x5A),
                                                                (0x30, 0x39), (0x5F, 0x5F)]),
            "s": (" ", [(0x20, 0x20)])}
_HEX = {"x": 2, "u": 4, "U": 8}


def _json_safe_pattern(pattern: str) -> str:
    r"""A regex as the converter can pass it on to GBNF, matching only what a JSON string can
    hold unescaped: the converter knows neither \d \w \s nor escaped punctuation beyond its own
    few, and its `.` and `[^...]` would let raw quotes, backslashes and control characters into
    the JSON. Classes become brackets, punctuation a \xHH escape, `.` and `[^...]` leave those
    characters out; a pattern that asks for one of them, or for \b, back-references, \p{...}, is
    refused by name."""
    def refuse(what: str):
        raise Unsupported(f"pattern {pattern!r}: {what} is not supported")

    def atom(i: int) -> tuple[str, list, int]:
        """One character (or class escape) at i: (GBNF text, code point ranges, next index)."""
        c = pattern[i]
        if c != "\\":
            return c, [(ord(c), ord(c))], i + 1
        if i + 1 >= len(pattern):
            refuse("a trailing backslash")
        e = pattern[i + 1]
        if e.lower() in _CLASSES:
            if e.isupper():
                body, _ = _CLASSES[e.lower()]
                return f"[^{body}{_NOT_THEM}]", None, i + 2  # outside [...] only (checked below)
            body, ranges = _CLASSES[e]
            return body, ranges, i + 2
        if e in _HEX:
            digits = pattern[i + 2:i + 2 + _HEX[e]]
            if not re.fullmatch(r"[0-9a-fA-F]+", digits or "-") or len(digits) != _HEX[e]:
                refuse(f"\\{e}{digits}")
            return f"\\{e}{digits}", [(int(digits, 16),) * 2], i + 2 + _HEX[e]
        if e in "tnr":
            return f"\\{e}", [(ord({"t": "\t", "n": "\n", "r": "\r"}[e]),) * 2], i + 2
        if e.isalnum() or ord(e) > 0xFF:
            refuse(f"\\{e}")
        return f"\\x{ord(e):02X}", [(ord(e), ord(e))], i + 2

    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "[":
            j = i + 1
            negated = pattern[j:j + 1] == "^"
            j += negated
            body, ranges = [], []
            while j < len(pattern) and pattern[j] != "]":
                if pattern[j:j + 2] in ("\\D", "\\W", "\\S"):
                    refuse(f"{pattern[j:j + 2]} inside [...]")
                text, r, j = atom(j)
                if pattern[j:j + 1] == "-" and pattern[j + 1:j + 2] not in ("", "]") and r \
                        and len(r) == 1:
                    text2, r2, j = atom(j + 1)
                    if not r2 or len(r2) != 1:
                        refuse("a range to a class")
                    text, r = f"{text}-{text2}", [(r[0][0], r2[0][1])]
                body.append(text)
                ranges += r
            if j >= len(pattern):
                refuse("an unclosed [")
            if negated:
                out.append(f"[^{''.join(body)}{_NOT_THEM}]")
            elif any(lo <= cp <= hi for lo, hi in ranges for cp in _MUST_ESCAPE):
                refuse(f"[{''.join(body)}] (it holds a quote, backslash or control character, "
                       "which the JSON string would have to escape)")
            else:
                out.append(f"[{''.join(body)}]")
            i = j + 1
        elif c == ".":
            out.append(f"[^{_NOT_THEM}]")
            i += 1
        elif c == "\\" and pattern[i + 1:i + 2] in tuple("[]()|{}*+?.") and \
                pattern[i + 1:i + 2] != ".":
            out.append(pattern[i:i + 2])             # the converter reads these itself
            i += 2
        else:
            text, r, i = atom(i)
            if r and any(lo <= cp <= hi for lo, hi in r for cp in _MUST_ESCAPE):
                refuse(f"{text!r} (the JSON string would have to escape it)")
            # a class body or an escape as a one-item class: the converter copies [...] as it is
            out.append(f"[{text}]" if r and len(text) > 1 else text)
    return "".join(out)


def check(schema: dict, path: str = "", depth: int = 0) -> None:
    """Raise Unsupported for the first constraining keyword the converter would skip at `path`.

    Mirrors SchemaConverter.visit: which branch a schema takes decides which keywords it enforces.
    """
    where = path or "the top level"
    if depth > MAX_DEPTH:
        raise Unsupported(f"nested more than {MAX_DEPTH} levels deep at {where}")
    if not isinstance(schema, dict):
        raise Unsupported(f"{where}: a schema must be a JSON object, got {json.dumps(schema)[:40]}")
    kind = schema.get("type")
    fmt = schema.get("format")

    def sub(s: Any, name: str) -> None:
        check(s, f"{path}.{name}" if path else name, depth + 1)

    for defs in ("$defs", "definitions"):
        for name, s in (schema.get(defs) or {}).items():
            sub(s, f"{defs}.{name}")
    if kind is not None and not (isinstance(kind, str) and kind in _TYPES) and not (
            isinstance(kind, list) and kind and all(t in _TYPES for t in kind)):
        raise Unsupported(f"{where}: type must be one of {', '.join(sorted(_TYPES))} "
                          f"(or a list of them), got {json.dumps(kind)}")

    if "$ref" in schema:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise Unsupported(f"{where}: only local $ref (#/...) is supported, got {ref!r}")
        used = {"$ref"}
    elif "oneOf" in schema or "anyOf" in schema:
        # oneOf is generated as anyOf: an answer may match more than one alternative
        key = "oneOf" if "oneOf" in schema else "anyOf"
        alts = schema[key]
        if not isinstance(alts, list) or not alts:
            raise Unsupported(f"{where}: {key} must be a non-empty array of schemas")
        for i, s in enumerate(alts):
            sub(s, f"{key}[{i}]")
        used = {key}
    elif isinstance(kind, list):
        used = {"type"}                         # each type with no other constraint
    elif "const" in schema:
        used = {"const", "type"}
    elif "enum" in schema:
        if not isinstance(schema["enum"], list) or not schema["enum"]:
            raise Unsupported(f"{where}: enum must be a non-empty array")
        used = {"enum", "type"}
    elif kind in (None, "object") and ("properties" in schema or (
            "additionalProperties" in schema and schema["additionalProperties"] is not True)):
        props = schema.get("properties") or {}
        if not isinstance(props, dict):
            raise Unsupported(f"{where}: properties must be an object")
        for name, s in props.items():
            sub(s, f"properties.{name}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            sub(extra, "additionalProperties")
        elif extra not in (None, False):
            raise Unsupported(f"{where}: additionalProperties must be a boolean or a schema")
        missing = [r for r in schema.get("required") or () if r not in props]
        if missing:
            raise Unsupported(f"{where}: required names {', '.join(map(str, missing))}, which "
                              "properties does not define")
        used = {"type", "properties", "required", "additionalProperties"}
    elif kind in (None, "array") and ("items" in schema or "prefixItems" in schema):
        items = schema.get("items") or schema.get("prefixItems")
        if isinstance(items, list):             # a tuple: exactly these items, in this order
            for i, s in enumerate(items):
                sub(s, f"{'items' if 'items' in schema else 'prefixItems'}[{i}]")
            used = {"type", "items" if "items" in schema else "prefixItems"}
        else:
            sub(items, "items")
            _counts(schema, where, "minItems", "maxItems")
            used = {"type", "items", "minItems", "maxItems"}
    elif kind in (None, "string") and "pattern" in schema:
        pattern = schema["pattern"]
        if not isinstance(pattern, str) or not (pattern.startswith("^") and pattern.endswith("$")):
            raise Unsupported(f"{where}: pattern must be anchored (start with ^ and end with $)")
        for m in _QUANTIFIER.finditer(pattern):
            if any(n and int(n) > MAX_COUNT for n in m.groups()):
                raise Unsupported(f"{where}: pattern repeats more than {MAX_COUNT} times")
        used = {"type", "pattern", "format"}
    elif kind in (None, "string") and fmt in _FORMATS:
        used = {"type", "format"}
    elif kind == "string" and ("minLength" in schema or "maxLength" in schema):
        _counts(schema, where, "minLength", "maxLength")
        used = {"type", "minLength", "maxLength", "format"}
    elif kind in ("object", None):
        # any JSON object (an empty schema too: stricter than "any value", never wrong)
        used = {"type"}
    else:
        used = {"type", "format"}               # a plain string, number, integer, boolean, null
    ignored = sorted((set(schema) & _CONSTRAINTS) - used - {"format"})
    if ignored:
        raise Unsupported(f"{where}: keyword '{ignored[0]}' is not supported here (the grammar "
                          "cannot enforce it)")


def _counts(schema: dict, where: str, lo: str, hi: str) -> None:
    for key in (lo, hi):
        n = schema.get(key)
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise Unsupported(f"{where}: {key} must be a non-negative integer")
        if n is not None and n > MAX_COUNT:
            raise Unsupported(f"{where}: {key} over {MAX_COUNT} is not supported")
    if schema.get(hi) is not None and schema.get(lo, 0) > schema[hi]:
        raise Unsupported(f"{where}: {lo} is above {hi}")

