"""Service behaviour on the tiny model, in process: readiness while loading, bounded queue and 503s,
cancellation on disconnect, heartbeats, metrics, OpenAPI, the OpenAI client."""
from __future__ import annotations

import asyncio
import re
import threading

import openai
from ampere_llm_server.app import STOP
from ampere_llm_server.batch import BatchEngine
from ampere_llm_server.engine import Done
from backend_helpers import sse_events, wait_ready

# A generation that holds its slot for seconds on the tiny model (4000 tokens, ctx 4096).
LONG = {"prompt": "Hello", "max_tokens": 4000, "temperature": 0}
SHORT = {"prompt": "Hi", "max_tokens": 3, "stream": False}


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def metrics_of(client) -> str:
    return await (await client.get("/metrics")).text()


async def until(predicate, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.01)


async def start_holder(client):
    """A streaming request that has its first token (so it holds the slot); its response."""
    resp = await client.post("/generate", json=LONG)
    assert resp.status == 200
    assert (await resp.content.readline()).startswith(b"data: {\"token\"")
    return resp


async def test_readiness_while_the_model_loads(make_client, tiny_model):
    gate = threading.Event()

    def slow_factory(c):
        gate.wait(30)  # the load is held here: what a multi-GB model looks like from outside
        return BatchEngine(c.model, n_ctx=c.ctx, n_threads=c.threads, slots=c.parallel)

    client = await make_client(factory=slow_factory)
    assert (await client.get("/healthz")).status == 200
    r = await client.get("/readyz")
    assert r.status == 503 and (await r.json())["status"] == "loading"
    r = await client.post("/generate", json=SHORT)
    assert r.status == 503 and (await r.json())["error"]["type"] == "not_ready"
    assert int(r.headers["Retry-After"]) >= 1
    assert metric(await metrics_of(client), "ampere_llm_ready") == 0
    models = await (await client.get("/v1/models")).json()
    assert models["data"][0]["id"] == tiny_model.name.removesuffix(".gguf")
    gate.set()
    await wait_ready(client)
    assert metric(await metrics_of(client), "ampere_llm_ready") == 1
    assert (await client.post("/generate", json=SHORT)).status == 200


async def test_a_model_that_fails_to_load_is_never_ready(make_client):
    def broken(c):
        raise ValueError("Failed to load model from file: broken.gguf")

    client = await make_client(factory=broken)
    await until(lambda: _status_is(client, "failed"))
    assert (await client.get("/healthz")).status == 200
    assert (await client.post("/generate", json=SHORT)).status == 503


async def _status_is(client, status):
    return (await (await client.get("/readyz")).json())["status"] == status


async def test_more_requests_than_slots_and_queue(make_client):
    client = await make_client(parallel=1, max_queue=1)
    holder = await start_holder(client)
    tasks = [asyncio.create_task(client.post("/generate", json=SHORT)) for _ in range(5)]
    # four are refused at once while the holder runs; one waits in the queue
    async with asyncio.timeout(30):
        while sum(t.done() for t in tasks) < 4:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED, timeout=0.1)
    refused = [t.result() for t in tasks if t.done()]
    for r in refused:
        assert r.status == 503
        assert (await r.json())["error"]["type"] == "overloaded"
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    text = await metrics_of(client)
    assert metric(text, "ampere_llm_queue_depth") == 1
    assert metric(text, "ampere_llm_slots_busy") == 1
    assert metric(text, "ampere_llm_refused_total") == 4
    holder.close()  # the holder's client leaves: its slot goes to the queued request
    (queued,) = [t for t in tasks if not t.done()]
    r = await queued
    assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] >= 1
    text = await metrics_of(client)
    assert metric(text, "ampere_llm_requests_total", '{route="/generate",status="503"}') == 4
    assert metric(text, "ampere_llm_queue_depth") == 0


async def test_disconnect_cancels_and_frees_the_slot(make_client):
    client = await make_client(parallel=1, max_queue=0)
    holder = await start_holder(client)
    assert metric(await metrics_of(client), "ampere_llm_slots_busy") == 1
    holder.close()

    async def cancelled():
        t = await metrics_of(client)
        return (metric(t, "ampere_llm_generations_total", '{finish_reason="cancelled"}') == 1
                and metric(t, "ampere_llm_slots_busy") == 0)

    await until(cancelled)
    made = metric(await metrics_of(client), "ampere_llm_completion_tokens_total")
    assert made < LONG["max_tokens"]  # it stopped early, it did not run to the end
    # with no queue at all, the freed slot takes the next request at once
    assert (await client.post("/generate", json=SHORT)).status == 200


async def test_a_queued_request_that_leaves_gives_up_its_place(make_client):
    client = await make_client(parallel=1, max_queue=1)
    holder = await start_holder(client)
    queued = asyncio.create_task(client.post("/generate", json=SHORT))
    await until(lambda: _queue_depth_is(client, 1))
    queued.cancel()  # the client gives up while waiting
    await until(lambda: _queue_depth_is(client, 0))
    t = await metrics_of(client)
    assert metric(t, "ampere_llm_generations_total", '{finish_reason="cancelled"}') == 1
    holder.close()


async def _queue_depth_is(client, n):
    return metric(await metrics_of(client), "ampere_llm_queue_depth") == n


async def test_heartbeat_while_queued(make_client):
    client = await make_client(parallel=1, max_queue=1, heartbeat_interval=0.05)
    holder = await start_holder(client)
    resp = await client.post("/generate", json={**SHORT, "stream": True})
    assert resp.status == 200  # headers go out at once, before the slot is free
    line = await asyncio.wait_for(resp.content.readline(), 10)
    assert line == b": keep-alive\n"  # a comment: SSE clients ignore it, proxies see traffic
    holder.close()
    events = await sse_events(resp)
    assert events[-1][0] == "done" and events[-1][1]["finish_reason"] in ("length", "stop")


async def test_metrics_count_requests_tokens_and_latencies(client):
    for _ in range(2):
        assert (await client.post("/generate", json={**SHORT, "max_tokens": 5,
                                                      "temperature": 0})).status == 200
    await client.post("/generate", data=b"{")
    t = await metrics_of(client)
    assert metric(t, "ampere_llm_requests_total", '{route="/generate",status="200"}') == 2
    assert metric(t, "ampere_llm_requests_total", '{route="/generate",status="400"}') == 1
    assert metric(t, "ampere_llm_prompt_tokens_total") >= 4
    assert 2 <= metric(t, "ampere_llm_completion_tokens_total") <= 10
    assert metric(t, "ampere_llm_time_to_first_token_seconds_count") == 2
    assert metric(t, "ampere_llm_inter_token_latency_seconds_count") >= 1
    assert metric(t, "ampere_llm_slots_total") == 4  # the default
    for name in ("ampere_llm_generations_total", "ampere_llm_queue_depth",
                 "ampere_llm_slots_busy", "ampere_llm_ready"):
        assert f"# TYPE {name.removesuffix('_total')}" in t


async def test_openapi_describes_every_route_and_body(client):
    doc = await (await client.get("/openapi.json")).json()
    want = {("/generate", "post"), ("/v1/chat/completions", "post"), ("/v1/completions", "post"),
            ("/v1/models", "get"), ("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get"),
            ("/openapi.json", "get")}
    assert {(p, m) for p, ops in doc["paths"].items() for m in ops} == want
    gen = doc["components"]["schemas"]["GenerateRequest"]
    assert {"prompt", "messages", "max_tokens", "stop", "seed", "stream"} <= set(gen["properties"])
    assert gen["additionalProperties"] is False
    assert doc["paths"]["/generate"]["post"]["security"] == [{"bearer": []}]


async def test_openai_client_unchanged(client):
    oa = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    models = await oa.models.list()
    model = models.data[0].id
    chat = await oa.chat.completions.create(model=model, max_tokens=8, temperature=0, seed=1,
                                            messages=[{"role": "user", "content": "Hi"}])
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("length", "stop")
    assert chat.usage.completion_tokens <= 8 and chat.model == model
    chunks = [c async for c in await oa.chat.completions.create(
        model=model, max_tokens=8, temperature=0, seed=1, stream=True,
        stream_options={"include_usage": True}, messages=[{"role": "user", "content": "Hi"}])]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    comp = await oa.completions.create(model=model, prompt="Once", max_tokens=5, temperature=0)
    streamed = [c async for c in await oa.completions.create(
        model=model, prompt="Once", max_tokens=5, temperature=0, stream=True)]
    assert "".join(c.choices[0].text for c in streamed) == comp.choices[0].text
    try:
        await oa.chat.completions.create(model=model, messages=[], max_tokens=1)
    except openai.BadRequestError as e:
        assert "messages: needs at least 1 item" in str(e)
    else:
        raise AssertionError("empty messages accepted")
    await oa.close()


async def test_openai_routes_ignore_unknown_fields_but_refuse_unsupported_ones(client):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "user": "u-1",
            "logprobs": False, "frequency_penalty": 0, "model": "whatever"}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status == 200 and (await r.json())["object"] == "chat.completion"
    r = await client.post("/v1/chat/completions", json={**body, "n": 2})
    assert r.status == 400 and "n: one choice per request" in (await r.json())["error"]["message"]
    r = await client.post("/v1/completions", json={"prompt": ["a", "b"], "max_tokens": 2})
    assert r.status == 400 and "prompt: has 2 items; at most 1" in (await r.json())["error"]["message"]


class HeldEngine(BatchEngine):
    """The real engine; each job's final event waits for `gate`, so a test can look at the
    service while the warm-up generation is still running."""

    def __init__(self, *a, **kw):
        self.gate, self.jobs = threading.Event(), []
        super().__init__(*a, **kw)

    def submit(self, job):
        self.jobs.append(job)
        emit = job.emit

        def held(ev):
            if isinstance(ev, Done):
                self.gate.wait(30)
            emit(ev)
        job.emit = held
        super().submit(job)


async def test_ready_only_after_a_warm_up_generation(make_client):
    engines = []

    def factory(c):
        engines.append(HeldEngine(c.model, n_ctx=c.ctx, n_threads=c.threads, slots=1))
        return engines[0]

    client = await make_client(factory=factory)
    async with asyncio.timeout(30):
        while not (engines and engines[0].jobs):
            await asyncio.sleep(0.01)
    r = await client.get("/readyz")
    assert r.status == 503 and (await r.json())["status"] == "loading"
    engines[0].gate.set()
    await wait_ready(client)
    warm = engines[0].jobs[0]
    assert warm.started.is_set() and len(engines[0].jobs) == 1
    assert (await client.post("/generate", json=SHORT)).status == 200


class NeverEngine(BatchEngine):
    """The real engine, but every decode step fails: the model loads and cannot generate."""

    def _step(self):
        raise RuntimeError("cannot decode")


async def test_a_failed_warm_up_ends_the_service(make_client):
    client = await make_client(
        factory=lambda c: NeverEngine(c.model, n_ctx=c.ctx, n_threads=c.threads, slots=1))
    stop = client.server.app[STOP]
    assert await asyncio.wait_for(asyncio.shield(stop), 30) == 1
    r = await client.get("/readyz")
    assert r.status == 503 and (await r.json())["status"] == "failed"


class ExplodingEngine(BatchEngine):
    """The real engine, made to fail on request: a step with a max_tokens=13 job raises inside the
    worker (as a failed llama_decode would)."""

    def _step(self):
        if any(s.job is not None and s.job.params.max_tokens == 13 for s in self._slots):
            raise RuntimeError("boom")
        super()._step()


async def test_an_engine_failure_is_reported_and_the_engine_recovers(make_client):
    client = await make_client(
        factory=lambda c: ExplodingEngine(c.model, n_ctx=c.ctx, n_threads=c.threads, slots=1))
    await wait_ready(client)
    r = await client.post("/generate", json={"prompt": "Hi", "max_tokens": 13})
    assert r.status == 200  # the stream had started: the failure arrives as an event
    events = await sse_events(r)
    assert events[-1][0] == "error" and "boom" in events[-1][1]["error"]["message"]
    r = await client.post("/generate", json={"prompt": "Hi", "max_tokens": 13, "stream": False})
    assert r.status == 500 and (await r.json())["error"]["type"] == "internal"
    r = await client.post("/generate", json={"prompt": "Hi", "max_tokens": 3, "stream": False})
    assert r.status == 200
    assert metric(await metrics_of(client), "ampere_llm_slots_busy") == 0


class BuggyEngine(BatchEngine):
    """The real engine with a bug planted in tokenize: the safety net must still answer JSON."""

    def tokenize(self, text, **kw):
        if "explode" in text:
            raise RuntimeError("planted bug")
        return super().tokenize(text, **kw)


async def test_an_unexpected_bug_is_a_json_500_and_the_service_goes_on(make_client):
    client = await make_client(
        factory=lambda c: BuggyEngine(c.model, n_ctx=c.ctx, n_threads=c.threads, slots=1))
    await wait_ready(client)
    r = await client.post("/generate", json={"prompt": "explode", "max_tokens": 2},
                          headers={"X-Request-Id": "bug-1"})
    assert r.status == 500
    assert (await r.json())["error"] == {"type": "internal",
                                         "message": "internal error (request id bug-1)"}
    assert (await client.post("/generate", json=SHORT)).status == 200


async def test_openai_stream_survives_heartbeats(make_client):
    client = await make_client(parallel=1, max_queue=1, heartbeat_interval=0.01)
    # the slot is busy for a few hundred ms (300 tokens): the queued stream gets many heartbeats
    holder = await client.post("/generate", json={**LONG, "max_tokens": 300})
    assert (await holder.content.readline()).startswith(b"data:")
    # on the wire: the queued OpenAI stream gets SSE comments before its first chunk
    raw = await client.post("/v1/completions", json={"model": "m", "prompt": "Once", "max_tokens": 2,
                                                      "stream": True})
    first = await raw.content.readline()
    assert first.startswith(b": keep-alive"), first
    assert (await raw.read()).rstrip().endswith(b"data: [DONE]")
    assert (await sse_events(holder))[-1][0] == "done"
    holder = await client.post("/generate", json={**LONG, "max_tokens": 300})
    assert (await holder.content.readline()).startswith(b"data:")
    oa = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    stream = await oa.completions.create(model="m", prompt="Once", max_tokens=5, temperature=0,
                                         stream=True)
    chunks = [c async for c in stream]
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert "".join(c.choices[0].text for c in chunks)
    assert (await sse_events(holder))[-1][0] == "done"  # the holder ran to its end meanwhile
    await oa.close()


async def test_metrics_say_where_a_streamed_token_spends_its_time(make_client):
    """The engine thread's parts of a step and the event loop's share (taking events, SSE writes)
    grow with a streamed request: what `make bench` reads for its breakdown."""
    client = await make_client()
    before = await metrics_of(client)
    resp = await client.post("/generate", json={"prompt": "Hello", "max_tokens": 8,
                                                "temperature": 0})
    events = await sse_events(resp)
    assert sum(1 for name, data in events if isinstance(data, dict) and "token" in data) >= 1
    after = await metrics_of(client)
    for part in ("deliver", "sse"):
        label = f'{{part="{part}"}}'
        assert (metric(after, "ampere_llm_event_loop_seconds_total", label)
                > metric(before, "ampere_llm_event_loop_seconds_total", label))
    for part in ("decode", "sample", "handoff"):
        label = f'{{part="{part}"}}'
        assert (metric(after, "ampere_llm_engine_step_seconds_total", label)
                > metric(before, "ampere_llm_engine_step_seconds_total", label))
    assert metric(after, "ampere_llm_engine_steps_total") > metric(before, "ampere_llm_engine_steps_total")
