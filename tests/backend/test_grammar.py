"""JSON schemas as clients write them (pydantic, the openai SDK's strict form) become grammars;
what the grammar could not enforce is refused with the keyword and where it is."""
from __future__ import annotations

import datetime
import enum
import uuid
from typing import Any, Literal

import pytest
from ampere_llm_server import grammar
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field


class Color(enum.Enum):
    red = "red"
    green = "green"


class Pet(BaseModel):
    kind: Literal["cat", "dog"]
    name: str = Field(description="the pet's name")


class Person(BaseModel):
    name: str
    age: int | None = None
    color: Color
    pets: list[Pet]
    scores: dict[str, int]
    born: datetime.date
    seen: datetime.datetime
    id: uuid.UUID
    anything: Any
    either: int | str
    code: str = Field(pattern=r"^[A-Z]{3}$")
    short: str = Field(max_length=10)


class Node(BaseModel):  # recursive: pydantic writes {"$ref", "$defs"} at the top
    value: int
    next: Node | None = None


@pytest.mark.parametrize("schema", [Person.model_json_schema(), to_strict_json_schema(Person),
                                    Node.model_json_schema(), {}, {"type": "object"}],
                         ids=["pydantic", "openai strict", "recursive", "empty", "object"])
def test_schemas_clients_write_become_grammars(schema):
    gbnf = grammar.to_gbnf(schema)
    assert "root ::=" in gbnf
    # JSON strings take no raw control characters (json.loads would refuse them)
    assert all(r"\x00-\x1F" in line for line in gbnf.splitlines() if line.startswith("char ::="))


REFUSED = [
    ({"type": "integer", "minimum": 0}, "the top level: keyword 'minimum'"),
    ({"properties": {"a": {"type": "array", "items": {}, "uniqueItems": True}}},
     "properties.a: keyword 'uniqueItems'"),
    ({"anyOf": [{"type": "string"}, {"not": {"type": "null"}}]}, "anyOf[1]: keyword 'not'"),
    ({"allOf": [{"type": "object"}, {"required": ["a"]}]}, "keyword 'allOf'"),
    ({"type": "object", "patternProperties": {"^a": {}}}, "keyword 'patternProperties'"),
    ({"enum": ["a"], "properties": {"a": {}}}, "keyword 'properties'"),  # the converter keeps enum
    ({"type": "object", "required": ["a"]}, "keyword 'required'"),
    ({"properties": {"a": {}}, "required": ["b"]}, "required names b"),
    ({"$defs": {"x": {"type": "number", "multipleOf": 2}}}, "$defs.x: keyword 'multipleOf'"),
    ({"type": "string", "pattern": "a+"}, "pattern must be anchored"),
    ({"type": "string", "pattern": r"^\bword$"}, r"\b is not supported"),
    ({"type": "string", "pattern": '^say "hi"$'}, "the JSON string would have to escape it"),
    ({"type": "string", "pattern": r"^[ -~]+$"}, "holds a quote, backslash or control character"),
    ({"type": "array", "items": {}, "maxItems": 100000}, "maxItems over 256"),
    ({"$ref": "https://example.com/x.json"}, "only local $ref"),
    ({"type": "date"}, "type must be one of"),
]


@pytest.mark.parametrize("schema, says", REFUSED, ids=[s for _, s in REFUSED])
def test_what_the_grammar_cannot_enforce_is_refused_by_name(schema, says):
    with pytest.raises(grammar.Unsupported) as e:
        grammar.to_gbnf(schema)
    assert says in str(e.value)


@pytest.mark.parametrize("pattern, rule", [
    (r"^\d{3}-\d{4}$", '"-"'), (r"^\w+@\w+\.com$", r'"@" [a-zA-Z0-9_]+ [\x2E] "com"'),
    (r"^.+$", r"[^\x22\x5C\x00-\x1F\x7F]+"), (r"^[^\s,]+$", r"[^ ,\x22\x5C\x00-\x1F\x7F]+")])
def test_regex_escapes_become_gbnf_and_keep_json_strings_valid(pattern, rule):
    """\\d \\w \\s and escaped punctuation are spelled for GBNF; `.` and [^...] leave out what a
    JSON string would have to escape."""
    gbnf = grammar.to_gbnf({"type": "string", "pattern": pattern})
    assert rule in gbnf, gbnf
