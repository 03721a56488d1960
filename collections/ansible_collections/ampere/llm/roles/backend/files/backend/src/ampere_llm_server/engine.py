"""The seam between the scheduler (asyncio) and llama.cpp (one worker thread): jobs in, events out.

The scheduler decides *whether* a request may run (auth, queue bound, slots, drain); an engine
decides *how* tokens are made. Two engines implement the same protocol:
- `single.SingleEngine`: one sequence at a time (--parallel 1),
- `batch.BatchEngine`: up to N sequences sharing each llama_decode (continuous batching, --parallel N>1).

An engine owns the model and the context and touches them only from its own thread; `submit` is
the only entry point and never blocks. The engine reports through `Job.emit`, which the scheduler
makes thread-safe (loop.call_soon_threadsafe), so engines know nothing about asyncio.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence, Union


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


Event = Union[Token, Done, Failed]


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
