"""BatchEngine: continuous batching, up to N sequences sharing each llama_decode (--parallel N, 1 too).

One worker thread owns a llama.cpp context with one KV stream per slot (n_seq_max = slots,
kv_unified = false, so every slot has its own n_ctx tokens and no sequence can crowd another
out). Each step it builds ONE llama_batch: the last sampled token of every generating sequence
plus a bounded chunk of the prompts still being read, then runs llama_decode once and samples each
sequence that produced logits with that request's own sampler chain (sampling.py). Jobs join and
leave between steps, so a newcomer waits one step, not for the others to finish; its prompt is
read in chunks (`prefill_chunk` tokens per step) so running streams keep their pace meanwhile.

Why these choices:
- Exactness: with a KV stream per sequence, a sequence's attention never sees another's cells,
  and llama.cpp's CPU matmuls and (non-flash) attention compute each row on its own as long as
  the sequence has the same kind of chunk (one token, or MIN_CHUNK and more), so greedy output is
  the same alone, in company, from a cached prompt prefix, and with one slot or N
  (tests/batching checks them on SmolLM2, the first token's logits bit for bit).
- Fairness: slots are granted in arrival order, every generating sequence gets one token per step,
  and prompt chunks go to the oldest newcomer first.
- Prefix reuse: a finished (or cancelled) slot keeps its KV cells; a newcomer takes the free slot
  whose cells share the longest prefix with its prompt and only the rest is read
  (llama_memory_seq_rm from the point where they diverge, at most len - MIN_CHUNK).
  Done.cached_tokens reports it.
- Flash attention on by default (what measures fastest here, and llama-server's default on CPU):
  llama.cpp's CPU flash-attention kernel splits a sequence's attention differently with more
  sequences in the ubatch, so a near-tie greedy token can depend on the batch's company;
  `flash_attn=False` (--flash-attn off) keeps greedy output independent of it, at the cost the
  bench measures (docs/bench/README.md).
- Hand-off off the critical path: a step's events are collected and go, in one SimpleQueue put
  just before the next llama_decode (or when the engine goes idle), to a courier thread, which
  calls each job's `emit`. The caller's emit wakes the event loop (a write to its self-pipe), and
  the loop then wants the GIL for its SSE writes; done on this thread, that cost ~0.6 ms a token
  on the bench, waiting for the loop; woken per token, the courier took the GIL between one
  sequence's sampling and the next (sampling 4 sequences cost ~2x sampling them with the courier
  asleep). Woken once as llama_decode releases the GIL, it does all of it while the decode runs.
  One courier keeps every job's events in order.
- Step accounting: every part of a step on this thread (scheduling, building the batch,
  llama_decode, sampling, detokenising with the stop-string check, handing events to the caller)
  is summed in `step_seconds` with perf_counter (~0.1 us a reading), for /metrics and the bench.
- Memory: the KV cache is sized from model metadata BEFORE it is allocated and checked against
  what the host (or its cgroup) has left, so a configuration that does not fit fails at start
  with a message naming the knobs, instead of the OOM killer deciding later.
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp._internals import LlamaModel

from .engine import ConfigError, Done, Failed, Job, Token
from .sampling import NoTokenAllowed, Sampler
from .text import FLUSH_TOKEN_ID, TextStream, chat_renderer, token_bytes

# Where the engine thread's time goes, per step (BatchEngine.step_seconds; /metrics).
# "prefill": llama_decode of steps that read prompt tokens; "decode": of steps that only generate.
STEP_PARTS = ("schedule", "batch", "prefill", "decode", "sample", "detokenize", "handoff")

log = logging.getLogger("ampere_llm.engine")

GiB = 1 << 30
# Fewest prompt tokens of one sequence read in one step (unless the whole prompt is shorter).
# llama.cpp's CPU matmul takes llamafile's tinyBLAS for the attention products only when a
# sequence has 2 or more tokens in the ubatch (on Arm: 4 or 8, by type) and ggml's vector dot
# otherwise; the two round differently (a prompt's last token read alone after a cached prefix
# moved SmolLM2's logits by up to 0.44). Reading every chunk, and so the last prompt token, in
# at least 8 tokens keeps a prompt's numbers the same however it is cut or cached.
MIN_CHUNK = 8


@dataclass
class _Slot:
    """One sequence id of the context, and what its KV stream holds."""
    seq: int
    cells: list[int] = field(default_factory=list)   # tokens whose KV is in this stream, in order
    job: Job | None = None
    prompt: list[int] = field(default_factory=list)
    sampler: Sampler | None = None
    text: TextStream | None = None
    next_token: int = -1      # sampled, not yet evaluated; -1 while the prompt is being read
    made: int = 0
    cached: int = 0
    order: int = 0            # when the slot was granted: prompt chunks go to the oldest first
    logits_at: int = -1       # index of this sequence's logits in the current batch

    @property
    def reading(self) -> bool:
        return self.job is not None and len(self.cells) < len(self.prompt)


class BatchEngine:
    def __init__(self, model_path: str | os.PathLike, *, n_ctx: int, slots: int, n_threads: int,
                 n_batch: int = 512, prefill_chunk: int = 256, flash_attn: bool = True,
                 memory_available: Callable[[], int] | None = None) -> None:
        """Blocks until the model is loaded (call it off the event loop); raises ConfigError when
        the settings cannot work, before allocating the KV cache."""
        if slots < 1 or slots > llama_cpp.llama_max_parallel_sequences():
            raise ConfigError(f"--parallel must be between 1 and "
                              f"{llama_cpp.llama_max_parallel_sequences()}, got {slots}")
        if n_ctx < 16:
            raise ConfigError(f"--ctx must be at least 16 tokens, got {n_ctx}")
        self.model_name = Path(model_path).name.removesuffix(".gguf")
        self.slots = slots
        self.flash_attn = flash_attn
        self.n_batch = max(n_batch, slots + MIN_CHUNK)
        self.prefill_chunk = max(MIN_CHUNK, min(prefill_chunk, self.n_batch - slots))
        # Optional hook for metrics, called on the engine thread after each decode:
        # on_step(sequences_in_batch, tokens_in_batch). It must be quick and thread-safe.
        self.on_step: Callable[[int, int], None] | None = None
        # Seconds this thread spent in each part of its steps, and how many steps: written only
        # here, read by anyone (a scrape may see one step's parts half added: a metric).
        self.step_seconds = dict.fromkeys(STEP_PARTS, 0.0)
        self.steps = 0
        self._memory_available = memory_available or host_memory_available
        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._busy = 0
        self._granted = 0
        loaded: Future[None] = Future()
        self._thread = threading.Thread(target=self._main, name="llama-batch", daemon=True,
                                        args=(str(model_path), n_ctx, n_threads, loaded))
        self._thread.start()
        loaded.result()

    # --- called from any thread -------------------------------------------------------------
    @property
    def slots_busy(self) -> int:
        """Slots running a job right now (read without a lock: a metric, not a decision)."""
        return self._busy

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        # The vocabulary is read-only after load: tokenizing beside a running decode is safe.
        return self._model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def render_chat(self, messages: Sequence[dict]) -> str:
        if self._render is None:
            raise ValueError("this model has no chat template: send a prompt instead of messages")
        return self._render(messages)

    def submit(self, job: Job) -> None:
        self._inbox.put(job)

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=30)

    # --- start-up (worker thread) -----------------------------------------------------------
    def _load(self, path: str, n_ctx: int, n_threads: int) -> None:
        if logging.getLogger("llama-cpp-python").level == logging.NOTSET:
            # llama.cpp's context chatter off (the service logs what matters itself).
            logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        mparams = llama_cpp.llama_model_default_params()
        self._model = model = LlamaModel(path_model=path, params=mparams, verbose=False)
        self._vocab = model.vocab
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(model.vocab)
        meta = model.metadata()
        bos, eos = model.token_bos(), model.token_eos()
        self._render = chat_renderer(meta, model.token_get_text(bos) if bos >= 0 else "",
                                     model.token_get_text(eos) if eos >= 0 else "")

        # llama.cpp gives each of the n_seq_max streams n_ctx / n_seq_max cells, rounded up to 256.
        per_seq = -(-n_ctx // 256) * 256
        need = kv_cache_bytes(model.model, meta, per_seq * self.slots)
        have = self._memory_available()
        weights = os.path.getsize(path)
        if need + weights > have:
            raise ConfigError(
                f"the KV cache for --parallel {self.slots} x --ctx {n_ctx} needs "
                f"{need / GiB:.2f} GiB plus {weights / GiB:.2f} GiB of weights, but only "
                f"{have / GiB:.2f} GiB of memory is available: lower --parallel or --ctx")

        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = per_seq * self.slots
        cparams.n_seq_max = self.slots
        cparams.kv_unified = False
        # Flash attention (--flash-attn, on by default): see the module docstring.
        cparams.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn
                                   else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cparams.n_batch = cparams.n_ubatch = self.n_batch
        cparams.n_threads = cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        ctx = llama_cpp.llama_init_from_model(model.model, cparams)
        if not ctx:
            raise ConfigError(f"llama.cpp could not create a context of {per_seq * self.slots} "
                              f"tokens for {self.slots} sequences (see the log above)")
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        # --ctx as asked: llama.cpp's rounding up to 256 cells is its allocation, not the limit.
        self.n_ctx = min(n_ctx, llama_cpp.llama_n_ctx_seq(ctx))
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        log.info("batch engine: %d slots x %d tokens, KV cache %.0f MiB, n_batch %d, prefill "
                 "chunk %d, flash attention %s", self.slots, self.n_ctx, need / 2**20, self.n_batch,
                 self.prefill_chunk, "on" if self.flash_attn else "off")

    def _main(self, path: str, n_ctx: int, n_threads: int, loaded: Future) -> None:
        try:
            self._load(path, n_ctx, n_threads)
        except BaseException as e:  # noqa: BLE001 - the caller re-raises it
            if getattr(self, "_model", None) is not None:
                self._model.close()
            loaded.set_exception(e)
            return
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: list = []
        courier = threading.Thread(target=self._courier, name="llama-courier", daemon=True)
        courier.start()
        loaded.set_result(None)
        self._slots = [_Slot(seq=i) for i in range(self.slots)]
        self._waiting: collections.deque[Job] = collections.deque()
        # Per token id: its bytes as text and whether it ends generation, asked of llama.cpp once
        # (two ctypes calls and a buffer per token per step otherwise).
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        try:
            self._loop()
        finally:
            for slot in self._slots:
                if slot.job is not None:
                    self._finish(slot, "cancelled")
            for job in self._waiting:
                self._send(job, Done("cancelled", len(job.prompt_tokens), 0))
            self._deliver()
            self._outbox.put(None)
            courier.join(timeout=30)
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._model.close()

    # --- hand-off ----------------------------------------------------------------------------
    def _send(self, job: Job, event) -> None:
        self._pending.append((job.emit, event))

    def _deliver(self) -> None:
        """Hand the events collected since the last call to the courier, in one put."""
        if self._pending:
            self._outbox.put(self._pending)
            self._pending = []

    def _courier(self) -> None:
        while (events := self._outbox.get()) is not None:
            for emit, event in events:
                try:
                    emit(event)
                except Exception:  # a receiver's bug must not stop everyone's events
                    log.exception("delivering an engine event failed")

    # --- the step loop (worker thread) ------------------------------------------------------
    def _loop(self) -> None:
        while True:
            idle = self._busy == 0 and not self._waiting
            if idle:  # no decode is coming to deliver the last events with
                self._deliver()
            try:  # block only when there is nothing to do
                while True:
                    job = self._inbox.get(block=idle)
                    if job is None:
                        return
                    self._waiting.append(job)
                    idle = False
            except queue.Empty:
                pass
            try:
                t0 = time.perf_counter()
                self._drop_cancelled()
                self._admit()
                if self._busy:
                    self.step_seconds["schedule"] += time.perf_counter() - t0
                    self._step()
            except Exception as e:
                log.exception("batch step failed")
                self._fail_all(f"generation failed: {e}")

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._waiting if j.cancelled.is_set()]:
            self._waiting.remove(job)
            self._send(job, Done("cancelled", len(job.prompt_tokens), 0))
        for slot in self._slots:
            if slot.job is not None and slot.job.cancelled.is_set():
                self._finish(slot, "cancelled")

    def _admit(self) -> None:
        """Give free slots to waiting jobs in arrival order, each to the free slot holding the
        longest prefix of its prompt (ties: the lowest id, which keeps the batch's sequence ids
        contiguous: llama.cpp splits a batch at gaps in them)."""
        while self._waiting:
            free = [s for s in self._slots if s.job is None]
            if not free:
                return
            job = self._waiting.popleft()
            prompt = job.prompt_tokens
            if not prompt or len(prompt) > self.n_ctx:
                self._send(job, Failed(f"the prompt has {len(prompt)} tokens; this server takes "
                                f"1 to {self.n_ctx} per request") if prompt else
                         Failed("the prompt is empty"))
                continue
            try:  # the grammar was parsed when the request came in: this fails only on a bug
                sampler = Sampler(job.params, self._n_vocab, self._vocab)
            except ValueError as e:
                self._send(job, Failed(str(e)))
                continue
            slot = max(free, key=lambda s: (common_prefix(s.cells, prompt), -s.seq))
            # Re-read at least MIN_CHUNK prompt tokens (the last one's logits give the first new
            # token), so they are computed as a fresh read computes them.
            keep = max(0, min(common_prefix(slot.cells, prompt), len(prompt) - MIN_CHUNK))
            if not llama_cpp.llama_memory_seq_rm(self._mem, slot.seq, keep, -1):
                keep = 0
                llama_cpp.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
            slot.cells = prompt[:keep]
            slot.job, slot.prompt, slot.cached = job, prompt, keep
            slot.sampler = sampler
            slot.text = TextStream(job.params.stop)
            slot.next_token, slot.made = -1, 0
            self._granted += 1
            slot.order = self._granted
            self._busy += 1
            job.started.set()

    def _step(self) -> None:
        clock, spent = time.perf_counter, self.step_seconds
        t0 = clock()
        batch = self._batch
        n = 0

        def add(slot: _Slot, token: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = len(slot.cells)
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = slot.seq
            batch.logits[n] = logits
            if logits:
                slot.logits_at = n
            slot.cells.append(token)
            n += 1

        running = [s for s in self._slots if s.job is not None]
        generating = sum(1 for s in running if not s.reading)
        # Prompt tokens per step are capped only while others stream, to keep their pace.
        budget = min(self.n_batch - generating, self.prefill_chunk) if generating else self.n_batch
        readers = sorted((s for s in running if s.reading), key=lambda s: s.order)
        chunk: dict[int, int] = {}
        for s in readers:
            take = prompt_chunk(budget, len(s.prompt) - len(s.cells))
            chunk[s.seq], budget = take, budget - take
        seqs = 0
        for s in running:  # in sequence-id order, so llama.cpp can keep them in one ubatch
            s.logits_at = -1
            if not s.reading:
                add(s, s.next_token, True)
            elif chunk.get(s.seq):
                for _ in range(chunk[s.seq]):
                    i = len(s.cells)
                    add(s, s.prompt[i], i == len(s.prompt) - 1)
            else:
                continue
            seqs += 1
        batch.n_tokens = n
        t1 = clock()
        spent["batch"] += t1 - t0
        self._deliver()                 # the courier runs while llama_decode releases the GIL
        t1b = clock()
        spent["handoff"] += t1b - t1
        rc = llama_cpp.llama_decode(self._ctx, batch)
        t2 = clock()
        spent["prefill" if any(chunk.values()) else "decode"] += t2 - t1b
        self.steps += 1
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        if self.on_step is not None:
            self.on_step(seqs, n)
        t3 = clock()
        spent["handoff"] += t3 - t2             # on_step: the metrics' share of the hand-off
        # The logits of every sequence that asked for them, one row each in batch order: one
        # ctypes call and one numpy view per step instead of one per sequence.
        outputs = [s for s in running if s.logits_at >= 0]
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(self._ctx),
                                       shape=(len(outputs), self._n_vocab)) if outputs else None
        spent["sample"] += clock() - t3
        for row, s in enumerate(outputs):
            self._sample(s, logits[row])

    def _sample(self, slot: _Slot, logits: np.ndarray) -> None:
        job = slot.job
        clock, spent = time.perf_counter, self.step_seconds
        t0 = clock()
        try:
            tok = slot.sampler.pick(logits)
        except NoTokenAllowed as e:  # this sequence only: the others go on
            return self._finish(slot, None, Failed(f"generation failed: {e}"))
        eog = self._eog.get(tok)
        if eog is None:
            eog = self._eog[tok] = llama_cpp.llama_vocab_is_eog(self._vocab, tok)
        t1 = clock()
        spent["sample"] += t1 - t0
        if eog:
            return self._finish(slot, "stop")
        slot.made += 1
        piece = self._pieces.get(tok)
        if piece is None:
            piece = self._pieces[tok] = token_bytes(self._vocab, tok)
        text = slot.text.push(piece)
        t2 = clock()
        spent["detokenize"] += t2 - t1
        self._send(job, Token(text, tok))
        spent["handoff"] += clock() - t2
        if slot.text.stopped:
            return self._finish(slot, "stop")
        # prompt + completion never exceed the context (the last token is not evaluated)
        if slot.made >= job.params.max_tokens or len(slot.prompt) + slot.made >= self.n_ctx:
            return self._finish(slot, "length")
        slot.next_token = tok

    def _finish(self, slot: _Slot, reason: str | None, failed: Failed | None = None) -> None:
        """End the slot's job (with `failed` instead of Done when given); its KV cells stay for
        prefix reuse by the next job."""
        job = slot.job
        if failed is not None:
            self._send(job, failed)
        else:
            if reason != "cancelled" and (tail := slot.text.flush()):
                self._send(job, Token(tail, FLUSH_TOKEN_ID))
            self._send(job, Done(reason, len(slot.prompt), slot.made, slot.cached))
        slot.sampler.close()
        slot.job, slot.sampler, slot.text, slot.prompt = None, None, None, []
        self._busy -= 1

    def _fail_all(self, message: str) -> None:
        """After a failed decode the KV state is unknown: end every running job, start clean."""
        llama_cpp.llama_memory_clear(self._mem, True)
        for slot in self._slots:
            slot.cells = []
            if slot.job is not None:
                self._send(slot.job, Failed(message))
                slot.sampler.close()
                slot.job, slot.sampler, slot.text, slot.prompt = None, None, None, []
        self._busy = 0


def prompt_chunk(budget: int, remaining: int) -> int:
    """Prompt tokens to read this step: all that remain if the budget allows, else as many as fit
    while both this chunk and what is left hold at least MIN_CHUNK tokens (0: wait a step)."""
    if remaining <= budget:
        return remaining
    take = min(budget, remaining - MIN_CHUNK)
    return take if take >= MIN_CHUNK else 0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def kv_cache_bytes(model, meta: dict[str, str], cells: int) -> int:
    """Bytes of an f16 K and V cache of `cells` tokens, from the model's shape (an upper bound for
    models with sliding-window layers, whose cache llama.cpp makes smaller)."""
    arch = meta.get("general.architecture", "llama")
    n_layer = llama_cpp.llama_model_n_layer(model)
    n_head = max(1, llama_cpp.llama_model_n_head(model))
    n_head_kv = llama_cpp.llama_model_n_head_kv(model) or n_head
    head = llama_cpp.llama_model_n_embd(model) // n_head
    k = int(meta.get(f"{arch}.attention.key_length", head))
    v = int(meta.get(f"{arch}.attention.value_length", head))
    return n_layer * cells * n_head_kv * (k + v) * 2


def host_memory_available(cgroup_root: Path = Path("/sys/fs/cgroup"),
                          proc_self_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """Bytes this process may still use: MemAvailable, or less if a cgroup v2 limit says so.

    The limit that matters is the unit's own (MemoryMax= in ampere-llm.service), which lives in
    this process's cgroup, not at the root of /sys/fs/cgroup; a limit on any ancestor (a slice)
    applies too, so every level from ours up to the root is read and the tightest wins."""
    with open("/proc/meminfo") as f:
        avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    try:
        own = next(line.split(":", 2)[2].strip() for line in proc_self_cgroup.read_text().splitlines()
                   if line.startswith("0::"))
    except (OSError, StopIteration, IndexError):
        return avail                            # no cgroup v2: MemAvailable is all we know
    level = (cgroup_root / own.lstrip("/")).resolve()
    root = cgroup_root.resolve()
    while level == root or root in level.parents:
        try:
            limit = (level / "memory.max").read_text().strip()
            if limit != "max":
                avail = min(avail, int(limit) - int((level / "memory.current").read_text()))
        except (OSError, ValueError):
            pass                                # the root and some levels have no memory files
        if level == root:
            break
        level = level.parent
    return avail
