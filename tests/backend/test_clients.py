"""The clients people already use, unchanged, against the real service on SmolLM2 (--parallel 2:
the batching engine): the official openai SDK, LangChain's ChatOpenAI and LiteLLM's `openai/`
provider. Plain chat, streaming with usage, text parts, the developer role, and structured output
(json_object and json_schema, through each client's own structured-output helper)."""
from __future__ import annotations

import json
import os

import openai
import pytest
from pydantic import BaseModel

# LiteLLM fetches a price list from the internet when imported, unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

PLAIN = [{"role": "system", "content": "You are brief."},
         {"role": "user", "content": "What is the capital of France?"}]
# the same conversation as a client may spell it: developer role, content as text parts
SPELLED = [{"role": "developer", "content": [{"type": "text", "text": "You are brief."}]},
           {"role": "user", "content": [{"type": "text", "text": "What is the capital"},
                                        {"type": "text", "text": "of France?"}]}]
PLAIN_JOINED = [PLAIN[0], {"role": "user", "content": "What is the capital\nof France?"}]
JSON_ASK = [{"role": "user", "content": "Describe a cat as JSON."}]
PERSON_ASK = [{"role": "user", "content": "Invent a person. Give their name and age."}]


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture
def smol(run_server, smollm2_model):
    server = run_server(smollm2_model, "--parallel", "2", "--threads", "1", "--ctx", "1024")
    server.v1 = server.url + "/v1"
    return server


def test_openai_sdk(smol):
    oa = openai.OpenAI(base_url=smol.v1, api_key="unused", max_retries=0)
    model = oa.models.list().data[0].id
    greedy = {"model": model, "temperature": 0, "max_tokens": 60}
    # null for optional fields (the SDK sends what it is given): not given
    whole = oa.chat.completions.create(messages=PLAIN, stop=None, seed=None, n=None, **greedy)
    text = whole.choices[0].message.content
    assert text.strip()
    chunks = list(oa.chat.completions.create(messages=PLAIN, stream=True,
                                             stream_options={"include_usage": True}, **greedy))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == \
        whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    spelled = oa.chat.completions.create(messages=SPELLED, **greedy)
    joined = oa.chat.completions.create(messages=PLAIN_JOINED, **greedy)
    assert spelled.usage.prompt_tokens == joined.usage.prompt_tokens
    assert spelled.choices[0].message.content == joined.choices[0].message.content

    obj = oa.chat.completions.create(messages=JSON_ASK, response_format={"type": "json_object"},
                                     **{**greedy, "max_tokens": 200})
    assert obj.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(obj.choices[0].message.content), dict)
    # the SDK's structured-output helper: a strict JSON schema from the pydantic model, parsed back
    parsed = oa.chat.completions.parse(messages=PERSON_ASK, response_format=Person,
                                       **{**greedy, "max_tokens": 100})
    assert isinstance(parsed.choices[0].message.parsed, Person)


def test_langchain_chat_openai(smol):
    from langchain_core.messages import ChatMessage, HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=smol.v1, api_key="unused", model="any", temperature=0,
                     max_tokens=60, max_retries=0)
    answer = llm.invoke([SystemMessage(PLAIN[0]["content"]), HumanMessage(PLAIN[1]["content"])])
    assert answer.content.strip() and answer.usage_metadata["output_tokens"] > 0
    chunks = list(llm.bind(stream_usage=True).stream(
        [SystemMessage(PLAIN[0]["content"]), HumanMessage(PLAIN[1]["content"])]))
    whole = chunks[0]
    for c in chunks[1:]:
        whole += c
    assert whole.content == answer.content and whole.usage_metadata == answer.usage_metadata
    spelled = llm.invoke([ChatMessage(role="developer", content=PLAIN[0]["content"]),
                          HumanMessage(content=SPELLED[1]["content"])])
    joined = llm.invoke([SystemMessage(PLAIN[0]["content"]),
                         HumanMessage(PLAIN_JOINED[1]["content"])])
    assert spelled.content == joined.content
    assert spelled.usage_metadata["input_tokens"] == joined.usage_metadata["input_tokens"]

    structured = llm.bind(max_tokens=100).with_structured_output(Person, method="json_schema")
    assert isinstance(structured.invoke(PERSON_ASK[0]["content"]), Person)
    as_dict = llm.bind(max_tokens=200).with_structured_output(
        {"title": "Cat", "type": "object", "properties": {}}, method="json_mode")
    assert isinstance(as_dict.invoke(JSON_ASK[0]["content"]), dict)


def test_litellm_openai_provider(smol):
    import litellm

    common = {"model": "openai/any", "api_base": smol.v1, "api_key": "unused", "temperature": 0,
              "max_tokens": 60}
    whole = litellm.completion(messages=PLAIN, **common)
    text = whole.choices[0].message.content
    assert text.strip()
    chunks = list(litellm.completion(messages=PLAIN, stream=True,
                                     stream_options={"include_usage": True}, **common))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    spelled = litellm.completion(messages=SPELLED, **common)
    joined = litellm.completion(messages=PLAIN_JOINED, **common)
    assert spelled.choices[0].message.content == joined.choices[0].message.content
    assert spelled.usage.prompt_tokens == joined.usage.prompt_tokens

    obj = litellm.completion(messages=JSON_ASK, response_format={"type": "json_object"},
                             **{**common, "max_tokens": 200})
    assert obj.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(obj.choices[0].message.content), dict)
    person = litellm.completion(messages=PERSON_ASK, response_format=Person,
                                **{**common, "max_tokens": 100})
    assert person.choices[0].finish_reason == "stop"
    Person.model_validate_json(person.choices[0].message.content)
