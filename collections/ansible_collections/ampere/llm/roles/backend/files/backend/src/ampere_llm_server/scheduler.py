"""Admission and slots: which request runs now, which waits (bounded), which is refused, and drain.

Everything here runs on the event loop, so there are no locks: the engine's thread reaches us only
through `loop.call_soon_threadsafe`. A slot is held from `engine.submit` until the engine's final
event (Done or Failed), not until the HTTP handler returns: a client that disconnects sets
`Job.cancelled`, and its slot is free only once the engine has actually stopped that sequence.

Queue policy: at most `slots` jobs run; at most `max_queue` wait, first come first served; anything
beyond is refused at once with 503 + Retry-After (a client or the load balancer can try another
node) instead of piling up. Drain (SIGTERM): refuse new work, let admitted work finish up to a
deadline, then cancel what is left.
"""
from __future__ import annotations

import asyncio
import collections
import enum
import math
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .engine import Done, Engine, Event, Failed, Job, SamplingParams, Token
from .metrics import Metrics


class State(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class Refused(Exception):
    """Not admitted: 503 with `reason` as the error type (overloaded | not_ready | draining)."""

    def __init__(self, reason: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.reason, self.retry_after = reason, retry_after


class HEARTBEAT:
    """Yielded by Ticket.events() when nothing happened for the heartbeat interval."""


class _Stamped(threading.Event):
    """A threading.Event that remembers when it was set: the engine's `started` ends queue time."""
    at: float | None = None

    def set(self) -> None:
        self.at = time.monotonic()
        super().set()


@dataclass(eq=False)
class Ticket:
    """One admitted request: its job, its event queue and its timings."""
    job: Job
    admitted: float = field(default_factory=time.monotonic)
    events_q: asyncio.Queue = field(default_factory=asyncio.Queue)
    first_token: float | None = None
    last_token: float | None = None
    end: Done | Failed | None = None
    running: bool = False

    async def events(self, heartbeat: float | None = None
                     ) -> AsyncIterator[Event | type[HEARTBEAT]]:
        """Engine events up to the final one included; HEARTBEAT after `heartbeat` idle seconds."""
        while True:
            if not self.events_q.empty():  # the common case while streaming: no timer needed
                ev = self.events_q.get_nowait()
            else:
                try:
                    ev = await asyncio.wait_for(self.events_q.get(), heartbeat)
                except asyncio.TimeoutError:
                    yield HEARTBEAT
                    continue
            yield ev
            if isinstance(ev, (Done, Failed)):
                return

    @property
    def finished(self) -> bool:
        return self.end is not None

    def timings(self) -> dict:
        started = self.job.started.at if isinstance(self.job.started, _Stamped) else None
        queue_ms = ((started or self.first_token or time.monotonic()) - self.admitted) * 1000
        ttft_ms = (self.first_token - self.admitted) * 1000 if self.first_token else None
        n = self.end.completion_tokens if isinstance(self.end, Done) else 0
        tps = None
        if self.first_token and self.last_token and n > 1 and self.last_token > self.first_token:
            tps = (n - 1) / (self.last_token - self.first_token)  # decode speed, prefill excluded
        return {"queue_ms": round(queue_ms, 1),
                "ttft_ms": None if ttft_ms is None else round(ttft_ms, 1),
                "tokens_per_second": None if tps is None else round(tps, 1)}


class Scheduler:
    def __init__(self, max_queue: int, metrics: Metrics) -> None:
        self.max_queue = max_queue
        self.metrics = metrics
        self.engine: Engine | None = None
        self.state = State.LOADING
        self.busy = 0
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._running: set[Ticket] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._avg_seconds = 5.0  # moving average of a request's run time, for Retry-After
        metrics.ready.set(0)

    # --- life cycle ---------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        self.engine = engine
        self.metrics.slots_total.set(engine.slots)
        self.metrics.watch_engine(engine)   # the engine's per-step time accounting, if it keeps one
        if hasattr(engine, "on_step"):  # BatchEngine reports each decode step from its thread
            engine.on_step = lambda sequences, tokens: self.metrics.batch_sequences.observe(sequences)
        if self.state is State.LOADING:
            self.state = State.READY
            self.metrics.ready.set(1)

    def fail(self) -> None:
        self.state = State.FAILED
        self.metrics.ready.set(0)

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    async def drain(self, timeout: float) -> bool:
        """Refuse new work, wait for admitted work up to `timeout` s, then cancel the rest.
        True if everything finished on its own."""
        self.state = State.DRAINING
        self.metrics.ready.set(0)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            for t in list(self._waiting) + list(self._running):
                self.cancel(t)
            try:  # a cancelled sequence stops within one decode step; bound the wait anyway
                await asyncio.wait_for(self._idle.wait(), 10)
            except asyncio.TimeoutError:
                pass
            return False

    # --- requests -----------------------------------------------------------------------------
    def check_open(self) -> Engine:
        """The engine, if new work may be admitted now; else Refused (not_ready / draining)."""
        if self.state is State.DRAINING:
            raise Refused("draining", "this node is shutting down; retry on another node", 1)
        if self.state is not State.READY or self.engine is None:
            raise Refused("not_ready", "the model is still loading; retry shortly", 1)
        return self.engine

    def submit(self, prompt_tokens: list[int], params: SamplingParams) -> Ticket:
        """Admit a request (run now, or wait in the bounded queue) or raise Refused."""
        engine = self.check_open()
        if self.busy >= engine.slots and len(self._waiting) >= self.max_queue:
            self.metrics.refused.inc()
            raise Refused("overloaded", f"all {engine.slots} slots busy and {len(self._waiting)} "
                          "requests queued; retry later", self._retry_after(engine.slots))
        loop = asyncio.get_running_loop()
        ticket = Ticket(Job(prompt_tokens, params, emit=lambda ev: None, started=_Stamped()))

        def emit(ev: Event) -> None:  # engine thread -> event loop
            try:
                loop.call_soon_threadsafe(self._on_event, ticket, ev)
            except RuntimeError:  # loop already closed at exit: nobody is listening
                pass

        ticket.job.emit = emit
        self._idle.clear()
        if self.busy < engine.slots:
            self._start(ticket)
        else:
            self._waiting.append(ticket)
            self.metrics.queue_depth.set(len(self._waiting))
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """The client is gone (or drain ran out of time): stop its generation, free its place."""
        if ticket.finished:
            return
        if ticket.running:
            ticket.job.cancelled.set()  # the engine ends it within one decode step
        else:
            self._waiting.remove(ticket)
            self.metrics.queue_depth.set(len(self._waiting))
            self._finish(ticket, Done("cancelled", len(ticket.job.prompt_tokens), 0))

    # --- internals ----------------------------------------------------------------------------
    def _start(self, ticket: Ticket) -> None:
        assert self.engine is not None
        self.busy += 1
        self.metrics.slots_busy.set(self.busy)
        ticket.running = True
        self._running.add(ticket)
        self.engine.submit(ticket.job)

    def _on_event(self, ticket: Ticket, ev: Event) -> None:
        t0 = time.perf_counter()
        try:
            self._take(ticket, ev)
        finally:
            self.metrics.loop_seconds["deliver"] += time.perf_counter() - t0

    def _take(self, ticket: Ticket, ev: Event) -> None:
        now = time.monotonic()
        if isinstance(ev, Token):
            if ev.token_id >= 0:
                if ticket.first_token is None:
                    ticket.first_token = now
                    self.metrics.ttft.observe(now - ticket.admitted)
                else:
                    self.metrics.itl.observe(now - ticket.last_token)
                ticket.last_token = now
            ticket.events_q.put_nowait(ev)
            return
        self.busy -= 1
        self.metrics.slots_busy.set(self.busy)
        self._running.discard(ticket)
        self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * (now - ticket.admitted)
        self._finish(ticket, ev)
        while self._waiting and self.busy < (self.engine.slots if self.engine else 0):
            nxt = self._waiting.popleft()
            self.metrics.queue_depth.set(len(self._waiting))
            self._start(nxt)

    def _finish(self, ticket: Ticket, ev: Done | Failed) -> None:
        ticket.end = ev
        if isinstance(ev, Done):
            self.metrics.generations.labels(ev.finish_reason).inc()
            self.metrics.prompt_tokens.inc(ev.prompt_tokens)
            self.metrics.completion_tokens.inc(ev.completion_tokens)
            self.metrics.prompt_tokens_cached.inc(ev.cached_tokens)
        else:
            self.metrics.generations.labels("error").inc()
        ticket.events_q.put_nowait(ev)
        if not self._waiting and not self._running:
            self._idle.set()

    def _retry_after(self, slots: int) -> int:
        """Seconds until a place is likely free: the queue ahead divided among the slots."""
        return max(1, min(60, math.ceil(self._avg_seconds * (len(self._waiting) + 1) / slots)))
