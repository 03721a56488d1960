"""SingleEngine: one sequence at a time on llama_cpp.Llama, in one worker thread (--parallel 1).

The worker thread loads the model, then runs jobs one after the other. The token loop is
Llama.generate(), so sampling parameters map 1:1 onto llama.cpp's sampler chain and the KV cache
keeps the longest common prefix with the previous sequence (a chat's next turn skips re-reading
the history). A request with a grammar (structured output) samples through sampling.Sampler
instead, as BatchEngine does, so both engines constrain output with the same code. The prompt is evaluated in n_batch chunks by this module rather than inside
generate(), so a cancelled job stops between chunks, and every generated token checks
`Job.cancelled`: a client that goes away costs at most one more llama_decode.
"""
from __future__ import annotations

import logging
import os
import queue
import random
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Iterator, Sequence

import llama_cpp

from .engine import Done, Failed, Job, SamplingParams, Token
from .sampling import NoTokenAllowed, Sampler
from .text import FLUSH_TOKEN_ID, TextStream, chat_renderer, token_bytes

log = logging.getLogger("ampere_llm.engine")


class SingleEngine:
    slots = 1

    def __init__(self, model_path: str | os.PathLike, *, n_ctx: int, n_threads: int,
                 n_batch: int = 512, flash_attn: bool = False) -> None:
        """Blocks until the model is loaded (call it off the event loop); raises if it cannot be."""
        self.model_name = Path(model_path).name.removesuffix(".gguf")
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        loaded: Future[None] = Future()
        self._thread = threading.Thread(target=self._main, name="llama-worker", daemon=True,
                                        args=(str(model_path), n_ctx, n_threads, n_batch, flash_attn,
                                              loaded))
        self._thread.start()
        loaded.result()

    # --- called from any thread -------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        # The vocabulary is read-only after load: tokenizing beside a running decode is safe.
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def render_chat(self, messages: Sequence[dict]) -> str:
        if self._render is None:
            raise ValueError("this model has no chat template: send a prompt instead of messages")
        return self._render(messages)

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    # --- the worker thread ------------------------------------------------------------------
    def _main(self, path: str, n_ctx: int, n_threads: int, n_batch: int, flash_attn: bool,
              loaded: Future) -> None:
        try:
            # verbose=False: llama.cpp's load chatter is dropped (our own logs use a private dup
            # of stderr, see cli.py, because llama-cpp-python silences fds 1 and 2 while loading).
            self._llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_batch=min(n_batch, n_ctx),
                                        n_threads=n_threads, n_threads_batch=n_threads,
                                        flash_attn=flash_attn, verbose=False)
            llm = self._llm
            # llama.cpp pads the context to 256 cells; Llama's own token array keeps what was asked.
            self.n_ctx = min(llm.n_ctx(), len(llm.input_ids))
            self._vocab = llm._model.vocab
            text_of = llm._model.token_get_text
            bos, eos = llm.token_bos(), llm.token_eos()
            self._render = chat_renderer(llm.metadata, text_of(bos) if bos >= 0 else "",
                                         text_of(eos) if eos >= 0 else "")
        except BaseException as e:  # noqa: BLE001 - the caller re-raises it
            loaded.set_exception(e)
            return
        loaded.set_result(None)
        while (job := self._jobs.get()) is not None:
            try:
                self._run(job)
            except Exception as e:  # noqa: BLE001 - one bad job must not end the worker
                log.exception("generation failed")
                self._llm.reset()  # the KV cache state is unknown now: start clean next time
                job.emit(Failed(f"generation failed: {e}"))
        self._llm.close()

    def _run(self, job: Job) -> None:
        llm, p, prompt = self._llm, job.params, job.prompt_tokens
        job.started.set()
        cached = self._prefill(prompt, job)
        if cached is None:
            job.emit(Done("cancelled", len(prompt), 0))
            return
        if p.grammar is None:
            llm.set_seed(p.seed if p.seed is not None else random.getrandbits(32))
            tokens = llm.generate(prompt, temp=p.temperature, top_k=p.top_k, top_p=p.top_p,
                                  min_p=p.min_p, repeat_penalty=p.repeat_penalty,
                                  frequency_penalty=p.frequency_penalty,
                                  presence_penalty=p.presence_penalty, reset=True)
        else:
            tokens = self._constrained(prompt, p)
        text = TextStream(p.stop)
        made, finish = 0, "length"
        try:
            for tok in tokens:
                if job.cancelled.is_set():
                    finish = "cancelled"
                    break
                if llama_cpp.llama_vocab_is_eog(self._vocab, tok):
                    finish = "stop"
                    break
                made += 1
                job.emit(Token(text.push(token_bytes(self._vocab, tok)), tok))
                if text.stopped:
                    finish = "stop"
                    break
                # prompt + completion never exceed the context (the last token is not evaluated).
                if made >= p.max_tokens or len(prompt) + made >= self.n_ctx:
                    break
        except NoTokenAllowed as e:
            job.emit(Failed(f"generation failed: {e}"))
            return
        finally:
            tokens.close()
        if finish != "cancelled" and (tail := text.flush()):
            job.emit(Token(tail, FLUSH_TOKEN_ID))
        job.emit(Done(finish, len(prompt), made, cached))

    def _constrained(self, prompt: list[int], p: SamplingParams) -> Iterator[int]:
        """Tokens under a grammar, sampled as BatchEngine samples them (sampling.Sampler: the
        grammar is applied in one place). Evaluates the last prompt token, then each token
        before the next is sampled; Llama's token record stays right for prefix reuse."""
        llm = self._llm
        sampler = Sampler(p, llm.n_vocab(), self._vocab)
        try:
            token = prompt[-1]
            while True:
                llm.eval([token])
                token = sampler.sample(llm.ctx, -1)
                yield token
        finally:
            sampler.close()

    def _prefill(self, prompt: list[int], job: Job) -> int | None:
        """Evaluate all but the last prompt token, reusing the cached prefix; None if cancelled.
        generate() then finds the prompt cached and evaluates only the last token."""
        llm = self._llm
        cached = 0
        limit = min(llm.n_tokens, len(prompt) - 1)
        ids = llm.input_ids
        while cached < limit and ids[cached] == prompt[cached]:
            cached += 1
        llm.n_tokens = cached  # eval() drops the KV cache beyond n_tokens
        for i in range(cached, len(prompt) - 1, llm.n_batch):
            if job.cancelled.is_set():
                return None
            llm.eval(prompt[i:min(i + llm.n_batch, len(prompt) - 1)])
        return cached
