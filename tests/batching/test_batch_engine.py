"""BatchEngine on real models: exactness alone vs together, cancellation, prefix reuse, stops, fairness,
start-up checks; and one HTTP round through the real server with --parallel 4."""
from __future__ import annotations

import json
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
from ampere_llm_server import grammar, sampling
from ampere_llm_server.batch import MIN_CHUNK, BatchEngine, ConfigError, host_memory_available
from ampere_llm_server.engine import Done, Failed, Job, SamplingParams, Token
from sse import iter_reads  # scripts/sse.py

GREEDY = SamplingParams(max_tokens=48, temperature=0.0, repeat_penalty=1.0)
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.",
             "Explain gravity to a child.", "List three colors.", "Why is the sky blue?"]


class Run:
    """One submitted job and everything it emitted."""

    def __init__(self, engine, prompt: str | list[int], params=GREEDY) -> None:
        self.tokens: list[int] = []
        self.text = ""
        self.end: Done | Failed | None = None
        self.finished = threading.Event()
        self.first_token = threading.Event()
        ids = engine.tokenize(prompt) if isinstance(prompt, str) else prompt
        self.job = Job(ids, params, self._emit)
        engine.submit(self.job)

    def _emit(self, e) -> None:
        if isinstance(e, Token):
            self.text += e.text
            if e.token_id >= 0:
                self.tokens.append(e.token_id)
                self.first_token.set()
        else:
            assert self.end is None, "a second Done/Failed"
            self.end = e
            self.finished.set()

    def wait(self, timeout: float = 300) -> Done | Failed:
        # A hang guard, not a speed check: generous for a busy CI box, and a job that missed it is
        # cancelled so it cannot keep running into the next test on the shared engine.
        if not self.finished.wait(timeout):
            self.job.cancelled.set()
            pytest.fail(f"job did not finish in {timeout} s ({len(self.tokens)} tokens so far)")
        return self.end


def chat(engine, q: str) -> str:
    return engine.render_chat([{"role": "user", "content": q}])


@pytest.fixture(scope="module")
def smol(smollm2_model):
    # One thread: llama.cpp's threads spin-wait for each other, so two threads on a 2-core box that
    # is also running other tests crawl; exactness does not depend on the thread count.
    # Flash attention off (the engine's default is on): exactness in company holds only without it.
    e = BatchEngine(smollm2_model, n_ctx=512, slots=4, n_threads=1, flash_attn=False)
    yield e
    e.close()


@pytest.fixture(scope="module")
def tiny(tiny_model):
    e = BatchEngine(tiny_model, n_ctx=256, slots=2, n_threads=1, flash_attn=False)
    yield e
    e.close()


def test_greedy_alone_equals_together_on_smollm2(smol):
    prompts = [chat(smol, q) for q in QUESTIONS]
    alone = []
    for p in prompts:
        r = Run(smol, p)
        r.wait()
        alone.append(r.tokens)
    # More jobs than slots, all at once: some join while others are mid-stream.
    together = [Run(smol, p) for p in prompts]
    for r, want in zip(together, alone):
        assert isinstance(r.wait(), Done)
        assert r.tokens == want


def test_answers_are_real_text(smol):
    r = Run(smol, chat(smol, QUESTIONS[0]))
    end = r.wait()
    assert isinstance(end, Done) and end.completion_tokens > 0
    assert len(r.text.split()) >= 5 and "\ufffd" not in r.text


def test_prefix_reuse_reports_cached_tokens_and_keeps_output(smol):
    system = "You are a careful assistant. Answer in one short sentence. " * 4
    first = chat_with(smol, system, "What is 2+2?")
    a = Run(smol, first)
    a.wait()
    # Re-read from the cache while other streams share the steps (the last MIN_CHUNK prompt
    # tokens are read again: batch.MIN_CHUNK says why).
    # (`again` first: a newcomer takes the free slot sharing most with its prompt, and an empty
    # slot shares nothing with `others`, which would then take the cached one)
    again = Run(smol, first)
    others = [Run(smol, chat(smol, q)) for q in QUESTIONS[:2]]
    end = again.wait()
    assert end.cached_tokens == len(again.job.prompt_tokens) - MIN_CHUNK
    assert again.tokens == a.tokens
    for r in others:
        r.wait()
    other = Run(smol, chat_with(smol, system, "Name a color."))
    end = other.wait()
    assert end.cached_tokens >= len(smol.tokenize(system)) - 2


def test_same_greedy_answer_with_one_slot(smol, smollm2_model):
    """--parallel 1 (one slot: nothing ever shares a step) and --parallel N answer alike."""
    system = "You are a careful assistant. Answer in one short sentence. " * 4
    prompts = [chat_with(smol, system, "What is 2+2?")] + [chat(smol, q) for q in QUESTIONS[:2]]
    batched = [Run(smol, p) for p in prompts]
    single = BatchEngine(smollm2_model, n_ctx=512, slots=1, n_threads=1, flash_attn=False)
    try:
        for p, b in zip(prompts, batched):
            s = Run(single, p)
            assert isinstance(s.wait(), Done) and isinstance(b.wait(), Done)
            assert b.tokens == s.tokens, p
    finally:
        single.close()


PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                          "city": {"type": "string"}},
          "required": ["name", "age", "city"], "additionalProperties": False}
JSON_QUESTIONS = ["Give me a person as JSON with name, age and city.", "Describe a cat as JSON.",
                  "Invent a pilot: name, age and home city, in JSON.", "List three colors as JSON."]


def test_constrained_greedy_is_the_same_alone_together_and_with_one_slot(smol, smollm2_model):
    """Structured output in the batching engine: every sequence has its own grammar state, and
    the shortlist changes nothing. The same greedy JSON alone, beside other constrained and free
    sequences, and with --parallel 1 (one slot); and it parses whenever it ended with stop."""
    person, anything = [replace(GREEDY, max_tokens=64, grammar=grammar.to_gbnf(schema))
                        for schema in (PERSON, grammar.JSON_OBJECT_SCHEMA)]
    jobs = [(chat(smol, q), p) for q, p in zip(JSON_QUESTIONS, (person, anything) * 2)]
    alone = []
    for prompt, params in jobs:
        r = Run(smol, prompt, params)
        end = r.wait()
        assert isinstance(end, Done), end
        if end.finish_reason == "stop":
            json.loads(r.text)
        alone.append(r)
    assert sum(r.end.finish_reason == "stop" for r in alone) >= len(jobs) // 2
    assert all(set(json.loads(r.text)) == set(PERSON["properties"])
               for r in alone[::2] if r.end.finish_reason == "stop")
    # free text shares the steps: its logits sit beside the constrained ones in every batch; more
    # jobs than slots, so some join while others are mid-stream
    free = [Run(smol, chat(smol, QUESTIONS[0]))]
    together = [Run(smol, prompt, params) for prompt, params in jobs]
    for r, want in zip(together, alone):
        assert isinstance(r.wait(), Done) and r.tokens == want.tokens, r.text
    for r in free:
        r.wait()
    single = BatchEngine(smollm2_model, n_ctx=512, slots=1, n_threads=1, flash_attn=False)
    try:
        for (prompt, params), want in zip(jobs[:2], alone):
            s = Run(single, prompt, params)
            assert isinstance(s.wait(), Done) and s.tokens == want.tokens, s.text
    finally:
        single.close()


def test_first_logits_are_bit_identical_fresh_cached_cut_and_in_company(smol, smollm2_model,
                                                                       monkeypatch):
    """The numbers, not only the greedy token: the logits of a prompt's last token are the same bit
    for bit read fresh, from a cached prefix, cut into chunks by a small batch, and beside other
    sequences reading and generating. (Read alone after a cached prefix, that token once took
    llama.cpp's one-row kernel and moved by up to 0.44: batch.MIN_CHUNK.)"""
    first: dict[int, np.ndarray] = {}
    init, pick = sampling.Sampler.__init__, sampling.Sampler.pick

    def tagged_init(self, p, *a, **kw):
        init(self, p, *a, **kw)
        self.tag = p.seed

    def recording_pick(self, logits):
        first.setdefault(self.tag, logits.copy())
        return pick(self, logits)

    monkeypatch.setattr(sampling.Sampler, "__init__", tagged_init)
    monkeypatch.setattr(sampling.Sampler, "pick", recording_pick)
    prompt = smol.tokenize(chat(smol, JSON_QUESTIONS[0]))
    tag = lambda t: replace(GREEDY, max_tokens=1, seed=t)  # noqa: E731 - the seed names the run
    for n_batch in (512, len(prompt) - 1):  # whole, then cut so that one token is left over
        e = BatchEngine(smollm2_model, n_ctx=512, slots=1, n_threads=1, n_batch=n_batch, flash_attn=False)
        try:
            fresh = Run(e, prompt, tag(n_batch))
            assert fresh.wait().cached_tokens == 0
            cached = Run(e, prompt, tag(n_batch + 1))
            assert cached.wait().cached_tokens == len(prompt) - MIN_CHUNK
        finally:
            e.close()
    others = [Run(smol, chat(smol, q), replace(GREEDY, max_tokens=40, seed=100 + i))
              for i, q in enumerate(QUESTIONS[:3])]
    assert others[0].first_token.wait(300)
    company = [Run(smol, prompt, tag(1000)), Run(smol, prompt, tag(1001))]
    for r in others + company:
        assert isinstance(r.wait(), Done)
    want = first[512]
    for t in (513, len(prompt) - 1, len(prompt), 1000, 1001):
        assert np.array_equal(first[t], want), (t, float(np.abs(first[t] - want).max()))


def chat_with(engine, system: str, q: str) -> str:
    return engine.render_chat([{"role": "system", "content": system}, {"role": "user", "content": q}])


def test_cancel_mid_stream_frees_the_slot(tiny):
    long = SamplingParams(max_tokens=100_000, temperature=0.0)
    a, b = Run(tiny, "one", long), Run(tiny, "two", long)
    assert a.first_token.wait(30) and b.first_token.wait(30)
    waiting = Run(tiny, "three", SamplingParams(max_tokens=5, temperature=0.0))
    a.job.cancelled.set()
    end = a.wait()
    assert end.finish_reason == "cancelled" and end.completion_tokens > 0
    assert waiting.wait().finish_reason == "length"  # got a's slot while b still runs
    assert not b.finished.is_set()
    b.job.cancelled.set()
    assert b.wait().finish_reason == "cancelled"


def test_cancel_before_start(tiny):
    long = SamplingParams(max_tokens=100_000, temperature=0.0)
    runs = [Run(tiny, f"busy {i}", long) for i in range(2)]
    queued = Run(tiny, "queued", long)
    queued.job.cancelled.set()
    assert queued.wait() == Done("cancelled", len(queued.job.prompt_tokens), 0)
    assert not queued.job.started.is_set()
    for r in runs:
        r.job.cancelled.set()
        r.wait()


def test_length_stop_strings_and_seeds(tiny):
    r = Run(tiny, "count", SamplingParams(max_tokens=7, temperature=0.0))
    end = r.wait()
    assert (end.finish_reason, end.completion_tokens) == ("length", 7)
    full = Run(tiny, "stop here", SamplingParams(max_tokens=40, temperature=0.0))
    full.wait()
    stop = full.text[len(full.text) // 2:][:3]
    cut = Run(tiny, "stop here", SamplingParams(max_tokens=40, temperature=0.0, stop=(stop,)))
    assert cut.wait().finish_reason == "stop"
    assert cut.text == full.text[:full.text.index(stop)]
    hot = dict(max_tokens=20, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    s1, s2, s3 = (Run(tiny, "dice", SamplingParams(**hot, seed=s)) for s in (1, 1, 2))
    for r in (s1, s2, s3):
        r.wait()
    assert s1.tokens == s2.tokens and s1.tokens != s3.tokens


def test_no_starvation_with_more_jobs_than_slots(tiny):
    runs = [Run(tiny, f"job {i}", SamplingParams(max_tokens=30, temperature=0.0)) for i in range(9)]
    for r in runs:
        end = r.wait()
        assert (end.finish_reason, end.completion_tokens) == ("length", 30)


def test_bad_prompts_fail_clearly(tiny):
    assert "empty" in Run(tiny, [], GREEDY).wait().message
    too_long = Run(tiny, [1] + [100] * tiny.n_ctx, GREEDY).wait()
    assert isinstance(too_long, Failed) and str(tiny.n_ctx) in too_long.message
    assert Run(tiny, "still serving", SamplingParams(max_tokens=3)).wait().completion_tokens == 3


def test_config_that_does_not_fit_fails_at_start(tiny_model):
    with pytest.raises(ConfigError, match=r"--parallel 64 x --ctx .* lower --parallel or --ctx"):
        BatchEngine(tiny_model, n_ctx=1 << 24, slots=64, n_threads=1)
    with pytest.raises(ConfigError, match="--parallel"):
        BatchEngine(tiny_model, n_ctx=256, slots=0, n_threads=1)


def test_memory_check_reads_the_units_own_cgroup(tmp_path):
    """A systemd unit's MemoryMax= sits in its own cgroup (/sys/fs/cgroup/system.slice/x.service),
    not at the root; a tighter slice above it wins."""
    root = tmp_path / "cgroup"
    unit = root / "system.slice" / "ampere-llm.service"
    unit.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("memory\n")        # the root has no memory.max
    (root / "system.slice" / "memory.max").write_text("max\n")
    (root / "system.slice" / "memory.current").write_text("999999999\n")
    (unit / "memory.max").write_text(f"{300 << 20}\n")
    (unit / "memory.current").write_text(f"{100 << 20}\n")
    me = tmp_path / "self-cgroup"
    me.write_text("0::/system.slice/ampere-llm.service\n")
    assert host_memory_available(root, me) == 200 << 20
    (root / "system.slice" / "memory.max").write_text(f"{1100 << 20}\n")   # the slice: ~146 MiB left
    assert host_memory_available(root, me) == (1100 << 20) - 999999999
    me.write_text("12:memory:/legacy\n")                       # cgroup v1 only: MemAvailable
    assert host_memory_available(root, me) > 200 << 20


def test_http_parallel_4_streams_concurrently(run_server, smollm2_model):
    server = run_server(smollm2_model, "--parallel", "4", "--ctx", "512", "--threads", "2",
                        "--flash-attn", "off")  # alone and together answer alike (exactness)

    def generate(q: str) -> tuple[str, dict]:
        body = json.dumps({"messages": [{"role": "user", "content": q}], "max_tokens": 12,
                           "temperature": 0}).encode()
        req = urllib.request.Request(server.url + "/generate", body,
                                     {"Content-Type": "application/json"})
        text, done = "", None
        with urllib.request.urlopen(req, timeout=60) as r:
            for e in (e for read in iter_reads(r) for e in read):
                if e.name == "done":
                    done = e.json()
                elif e.name == "message":
                    text += e.json()["token"]
        return text, done

    alone = [generate(q) for q in QUESTIONS[:4]]  # one at a time: each alone in the engine
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(generate, QUESTIONS[:4]))
    for (t1, d1), (t2, d2) in zip(alone, together):
        assert d1 and d2 and d2["finish_reason"] in ("stop", "length")
        assert t1 == t2 and t1

    # The metrics saw it: steps shared by several sequences, and the repeated prompts read from
    # the slots' caches.
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        metrics = {line.split(" ")[0]: float(line.split(" ")[1])
                   for line in r.read().decode().splitlines() if line and not line.startswith("#")}
    steps = metrics["ampere_llm_batch_sequences_count"]
    assert steps > 0 and metrics['ampere_llm_batch_sequences_bucket{le="1.0"}'] < steps
    assert metrics["ampere_llm_prompt_tokens_cached_total"] > 0


@pytest.mark.parametrize("flash_attn", [True, False])
def test_flash_attention_option_reaches_llama_cpp(smollm2_model, capsys, flash_attn):
    """--flash-attn on/off is what llama.cpp's context reports (its own log line), and an engine
    with the kernel on streams real answers in company."""
    import logging
    chatter = logging.getLogger("llama-cpp-python")
    old = chatter.level
    chatter.setLevel(logging.INFO)      # llama.cpp's context log, muted by default
    try:
        e = BatchEngine(smollm2_model, n_ctx=256, slots=2, n_threads=1, flash_attn=flash_attn)
    finally:
        chatter.setLevel(old)
    try:
        said = [ln for ln in capsys.readouterr().err.splitlines() if "flash_attn" in ln]
        assert said and said[-1].split("=")[-1].strip() == ("enabled" if flash_attn else "disabled")
        runs = [Run(e, chat(e, q)) for q in QUESTIONS[:3]]
        for r in runs:
            end = r.wait()
            assert isinstance(end, Done) and end.completion_tokens > 0, end
            assert len(r.text.split()) >= 3 and "\ufffd" not in r.text
    finally:
        e.close()

