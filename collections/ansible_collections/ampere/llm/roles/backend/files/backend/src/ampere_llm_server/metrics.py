"""Prometheus metrics of one app (own CollectorRegistry, so tests can run several apps in a process).

Names are part of the contract (docs/CONTRACTS.md): dashboards and the page read them.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

P = "ampere_llm_"
# Time to first token spans a cached short prompt (ms) to a long CPU prefill behind a queue (tens of s).
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Inter-token latency on CPU: ~2 ms (tiny models) to ~200 ms (large models, many sequences).
ITL_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1)
# Sequences sharing one llama_decode: 1 .. --parallel (at most 256 in llama.cpp).
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
# Event-loop work per engine event: "deliver" takes it from the engine (timings, metrics, the
# request's queue), "sse" formats a token and writes it to the client's stream.
LOOP_PARTS = ("deliver", "sse")


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(P + "requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.generations = Counter(P + "generations", "Finished generations by finish reason "
                                   "(cancelled: Stop button, disconnect or drain)",
                                   ["finish_reason"], registry=r)
        self.refused = Counter(P + "refused", "Requests refused because slots and queue were full",
                               registry=r)
        self.prompt_tokens = Counter(P + "prompt_tokens", "Prompt tokens of finished generations",
                                     registry=r)
        self.completion_tokens = Counter(P + "completion_tokens", "Generated tokens", registry=r)
        self.queue_depth = Gauge(P + "queue_depth", "Requests waiting for a slot", registry=r)
        self.slots_busy = Gauge(P + "slots_busy", "Slots generating now", registry=r)
        self.slots_total = Gauge(P + "slots_total", "Sequences the engine runs at once", registry=r)
        self.ready = Gauge(P + "ready", "1 when the model is loaded and the node takes requests",
                           registry=r)
        self.batch_sequences = Histogram(P + "batch_sequences", "Sequences sharing each decode "
                                         "step (continuous batching, --parallel > 1)",
                                         buckets=BATCH_BUCKETS, registry=r)
        self.prompt_tokens_cached = Counter(P + "prompt_tokens_cached", "Prompt tokens taken "
                                            "from a slot's cache instead of evaluated again "
                                            "(prefix reuse)", registry=r)
        self.ttft = Histogram(P + "time_to_first_token_seconds", "Admission to first token "
                              "(queue + prefill)", buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram(P + "inter_token_latency_seconds", "Time between streamed tokens",
                             buckets=ITL_BUCKETS, registry=r)
        # The event loop's share of streaming, beside the engine thread's steps: plain floats
        # added per token (a labelled Counter's lock would cost more than what it measures).
        self.loop_seconds = dict.fromkeys(LOOP_PARTS, 0.0)
        r.register(_LoopSeconds(self.loop_seconds))

    def watch_engine(self, engine) -> None:
        """Expose the engine's own step accounting (BatchEngine.step_seconds and .steps), read at
        scrape time: the decode thread only adds to floats, it never calls into Prometheus."""
        if getattr(self, "_steps", None) is not None:
            self.registry.unregister(self._steps)
        self._steps = _EngineSteps(engine) if hasattr(engine, "step_seconds") else None
        if self._steps is not None:
            self.registry.register(self._steps)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineSteps:
    """`engine_step_seconds_total{part}` and `engine_steps_total`: where the engine thread's time
    goes per decode step (part: schedule, batch, prefill, decode, sample, detokenize, handoff)."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def collect(self):
        parts = CounterMetricFamily(P + "engine_step_seconds", "Seconds the engine thread spent "
                                    "in each part of its decode steps", labels=["part"])
        for part, seconds in list(self.engine.step_seconds.items()):
            parts.add_metric([part], seconds)
        yield parts
        yield CounterMetricFamily(P + "engine_steps", "Decode steps (llama_decode calls)",
                                  value=self.engine.steps)


class _LoopSeconds:
    """`event_loop_seconds_total{part}`: the event loop's time on engine events (LOOP_PARTS)."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds

    def collect(self):
        parts = CounterMetricFamily(P + "event_loop_seconds", "Seconds the event loop spent on "
                                    "engine events: taking them (deliver) and streaming tokens "
                                    "to clients (sse)", labels=["part"])
        for part, seconds in list(self.seconds.items()):
            parts.add_metric([part], seconds)
        yield parts
