"""The real service process on a real model (SmolLM2-135M-Instruct): chat through the model's template,
the openai client streaming, stop strings, seeds, cancellation on disconnect, drain on SIGTERM."""
from __future__ import annotations

import contextlib
import re
import signal
import time

import aiohttp
import openai
import pytest
from sse import aiter_events  # scripts/sse.py

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]


async def post(server, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(server.url + "/generate", json=body) as r:
        return r.status, await r.json()


async def events(stream) -> list[tuple[str, dict]]:
    """The rest of an aiter_events stream until it ends: [(name, parsed data)], no heartbeats."""
    return [(e.name, e.json()) async for e in stream if e.name != "comment"]


def metric(server, name: str, labels: str = "") -> float:
    text = server.get("/metrics")[2].decode()
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_for(predicate, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def smol(run_server, smollm2_model):
    # flash attention off: these tests compare answers of the same prompt, fresh and cached
    return run_server(smollm2_model, "--node-name", "smol-node", "--threads", "1", "--flash-attn", "off")


def rendered_by_hand(model_path, messages) -> str:
    """The chat prompt rendered here, independently of the service: the template read from the GGUF
    file with the gguf package and rendered with Jinja2 in the environment Hugging Face's
    tokenizers use for chat templates (sandboxed, trim_blocks, lstrip_blocks)."""
    import gguf
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    field = gguf.GGUFReader(model_path).fields["tokenizer.chat_template"]
    template = bytes(field.parts[field.data[0]]).decode()
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)


# A 135M model's greedy answer is not the same on every CPU (AVX2 and AVX-512 kernels round
# differently and a near-tie flips), so these tests compare the service with itself and with a
# prompt rendered by hand, never with what the model is expected to say.
async def test_chat_through_the_models_template(smol, smollm2_model):
    by_hand = rendered_by_hand(smollm2_model, CAPITAL)
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in by_hand
    body = {"temperature": 0, "max_tokens": 200, "stream": False}  # room to end its turn
    status, chat = await post(smol, {**body, "messages": CAPITAL})
    assert status == 200
    status, raw = await post(smol, {**body, "prompt": by_hand})
    assert status == 200
    # the same tokens went in (special tokens included), so the same text came out
    assert chat["usage"]["prompt_tokens"] == raw["usage"]["prompt_tokens"]
    assert chat["text"] == raw["text"] and chat["text"].strip()
    assert chat["finish_reason"] == "stop"  # the model ended its turn (<|im_end|>), not the limit
    assert "<|im_end|>" not in chat["text"] and "<|im_start|>" not in chat["text"]
    # without the template the model sees other tokens: the chat request did not send them raw
    status, plain = await post(smol, {**body, "prompt": CAPITAL[0]["content"]})
    assert plain["usage"]["prompt_tokens"] < chat["usage"]["prompt_tokens"]


def test_openai_client_streams(smol, smollm2_model):
    oa = openai.OpenAI(base_url=smol.url + "/v1", api_key="unused", max_retries=0)
    (model,) = [m.id for m in oa.models.list()]
    assert model == "SmolLM2-135M-Instruct.Q4_1"
    whole = oa.chat.completions.create(model=model, messages=CAPITAL, temperature=0,
                                       max_tokens=60)
    stream = oa.chat.completions.create(model=model, messages=CAPITAL, temperature=0,
                                        max_tokens=60, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream]
    assert len([p for p in pieces if p]) > 3  # token by token, not one lump
    assert "".join(pieces) == whole.choices[0].message.content
    # the OpenAI route renders the chat exactly as /generate does: same model, same greedy answer
    text = oa.completions.create(model=model, prompt=rendered_by_hand(smollm2_model, CAPITAL),
                                 temperature=0, max_tokens=60).choices[0].text
    assert text == whole.choices[0].message.content


async def test_stop_strings(smol):
    base = {"messages": STORY, "temperature": 0, "max_tokens": 80, "stream": False}
    full = (await post(smol, base))[1]["text"]
    # the stop string is taken from this answer (what the model says differs between CPUs): six
    # characters from a word boundary past the middle, so it may start and end inside tokens
    mid = full.index(" ", len(full) // 2)
    stop = full[mid:mid + 6]
    assert len(stop) == 6 and full.index(stop) > 0
    async with aiohttp.ClientSession() as s, s.post(
            smol.url + "/generate", json={**base, "stream": True, "stop": [stop, "zzz-never"]}) as r:
        ev = await events(aiter_events(r))
    text = "".join(d["token"] for n, d in ev if n == "message")
    assert text == full[: full.index(stop)]
    assert ev[-1] == ("done", ev[-1][1]) and ev[-1][1]["finish_reason"] == "stop"


async def test_same_seed_same_text(smol):
    body = {"messages": STORY, "temperature": 0.9, "max_tokens": 40, "stream": False}
    a, b, c = [(await post(smol, {**body, "seed": s}))[1]["text"] for s in (42, 42, 43)]
    assert a == b
    assert a != c


async def test_empty_prompt_is_400(smol):
    status, body = await post(smol, {"prompt": ""})  # this vocabulary adds no BOS
    assert status == 400 and body["error"]["message"] == "prompt is empty"


@contextlib.asynccontextmanager
async def story_under_way(server, max_tokens: int):
    """A streamed /generate of a long story, once its first token has arrived: (response, the
    rest of its events as an aiter_events stream)."""
    async with aiohttp.ClientSession() as s, s.post(
            server.url + "/generate",
            json={"messages": STORY, "temperature": 0, "max_tokens": max_tokens}) as r:
        stream = aiter_events(r)
        async for e in stream:
            if e.name == "message":
                break
        yield r, stream


async def test_disconnect_cancels_generation_and_frees_the_slot(run_server, smollm2_model):
    server = run_server(smollm2_model, "--max-queue", "0", "--threads", "1")
    async with story_under_way(server, 1000) as (r, _):
        assert metric(server, "ampere_llm_slots_busy") == 1
        r.close()  # the client goes away mid-stream
    wait_for(lambda: metric(server, "ampere_llm_generations_total",
                            '{finish_reason="cancelled"}') == 1, what="cancelled generation")
    wait_for(lambda: metric(server, "ampere_llm_slots_busy") == 0, what="slot freed")
    # it stopped soon after the client left (not at 1000): allow for a slow, busy test machine
    assert metric(server, "ampere_llm_completion_tokens_total") < 200
    assert (await post(server, {"prompt": "Hi", "max_tokens": 2, "stream": False}))[0] == 200
    assert '"finish_reason": "cancelled"' in server.log()


async def test_sigterm_drains_in_flight_then_exits_0(run_server, smollm2_model):
    server = run_server(smollm2_model, "--threads", "1")
    async with story_under_way(server, 150) as (_, stream):
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: server.get("/readyz")[0] == 503, timeout=10, what="/readyz 503")
        status, body = await post(server, {"prompt": "Hi", "max_tokens": 2})
        assert status == 503 and body["error"]["type"] == "draining"
        assert server.get("/healthz")[0] == 200  # alive while it drains
        rest = await events(stream)
    assert rest[-1][0] == "done" and rest[-1][1]["finish_reason"] in ("length", "stop")
    assert server.proc.wait(30) == 0


async def test_drain_timeout_cancels_what_is_left(run_server, smollm2_model):
    server = run_server(smollm2_model, "--drain-timeout", "0.5", "--threads", "1")
    async with story_under_way(server, 1000) as (_, stream):
        server.proc.send_signal(signal.SIGTERM)
        rest = await events(stream)
    assert rest[-1][0] == "done" and rest[-1][1]["finish_reason"] == "cancelled"
    assert server.proc.wait(30) == 0
