"""The seam between the scheduler (asyncio) and llama.cpp (one worker thread): jobs in, events out.

The scheduler decides *whether* a request may run (auth, queue bound, slots, drain); an engine
decides *how* tokens are made. One engine implements the protocol: `batch.BatchEngine`, up to
--parallel sequences sharing each llama_decode (continuous batching; --parallel 1 is one slot).
Tests may stand in for it with anything that has these members.

An engine owns the model and the context and touches them only from its own thread; `submit` is
the only entry point and never blocks. The engine reports through `Job.emit`, which the scheduler
makes thread-safe (loop.call_soon_threadsafe), so engines know nothing about asyncio.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol


class ConfigError(ValueError):
    """A setting that cannot work (an option, or an engine that cannot start with it); the
    message says which setting to change. One class for cli.py's checks and the engines'."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    frequency_penalty: float = 0.0   # OpenAI's: minus count x this, for tokens in the penalty window
    presence_penalty: float = 0.0    # OpenAI's: minus this, for tokens in the penalty window
    seed: int | None = None          # None: a fresh random seed per request
    stop: tuple[str, ...] = ()       # generation ends *before* the first stop string; it is not emitted
    grammar: str | None = None       # GBNF (grammar.py) every answer must follow; None: free text


@dataclass(frozen=True)
class Token:
    """Text made by one step. `text` may be "" while a multi-byte character is incomplete, or when
    the text is held back because it might be the start of a stop string. `token_id` -1
    (text.FLUSH_TOKEN_ID) marks held-back text released at the end of a sequence, not a new token."""
    text: str
    token_id: int


@dataclass(frozen=True)
class Done:
    finish_reason: Literal["stop", "length", "cancelled"]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0           # prompt tokens not evaluated again (prefix reuse)


@dataclass(frozen=True)
class Failed:
    message: str


Event = Token | Done | Failed


@dataclass
class Job:
    prompt_tokens: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]    # called from the engine thread; exactly one Done or Failed ends a job
    cancelled: threading.Event = field(default_factory=threading.Event)  # set by the scheduler on disconnect
    # set by the engine when the first prompt token is evaluated (queue time ends here)
    started: threading.Event = field(default_factory=threading.Event)


class Engine(Protocol):
    n_ctx: int          # context tokens available to ONE sequence
    slots: int          # sequences the engine runs at once
    model_name: str

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]: ...

    def render_chat(self, messages: Sequence[dict]) -> str:
        """The model's own chat template applied to messages, with the assistant turn opened."""
        ...

    def submit(self, job: Job) -> None:
        """Queue the job for the worker thread; at most `slots` jobs are submitted at once."""
        ...

    def close(self) -> None:
        """Cancel what runs, stop the worker thread, free the model."""
        ...


WARM_UP = SamplingParams(max_tokens=8, temperature=0.0, seed=0)


def warm_up(engine: Engine, timeout: float = 300.0) -> Done | None:
    """One short greedy generation before the service says it is ready, so the first user does not
    pay for cold caches (weights paged in, llama.cpp's first-use allocations and thread start-up).
    The prompt is the chat template's opening when the model has one, so its cells stay in a slot
    as a reusable prefix. Returns the Done, or None if it did not end within `timeout` (cancelled
    then: a slow start is no reason to refuse work). Raises RuntimeError if the engine failed it."""
    try:
        text = engine.render_chat([{"role": "user", "content": "Hi"}])
    except ValueError:  # no chat template
        text = "Hello"
    ended: list[Event] = []
    finished = threading.Event()

    def emit(ev: Event) -> None:
        if isinstance(ev, (Done, Failed)):
            ended.append(ev)
            finished.set()

    job = Job(engine.tokenize(text), WARM_UP, emit)
    engine.submit(job)
    if not finished.wait(timeout):
        job.cancelled.set()
        finished.wait(timeout)
        return None
    if isinstance(ended[0], Failed):
        raise RuntimeError(f"the warm-up generation failed: {ended[0].message}")
    return ended[0]
