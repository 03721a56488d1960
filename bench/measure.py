"""Aggregate decode throughput of BatchEngine at 1/2/4/8 concurrent streams, in process (not a test).

Usage: .venv/bin/python bench/measure.py MODEL.gguf [THREADS] [MAX_TOKENS]
with LLAMA_CPP_LIB_PATH set as the Makefile sets it (its llama.cpp build's bin/).
Every stream gets its own prompt (no shared prefix beyond the chat template) and runs to
MAX_TOKENS or end of text; tok/s = all completion tokens / wall time from first submit to last Done.
The service-level side-by-side with llama-server is `make bench`.
"""
from __future__ import annotations

import statistics
import sys
import threading
import time

from ampere_llm_server.batch import BatchEngine
from ampere_llm_server.engine import Done, Job, SamplingParams, Token

TOPICS = ["a lighthouse keeper", "the history of bread", "a trip to Mars", "how rivers form",
          "a chess tournament", "the life of a bee", "a city under the sea", "an old clock"]


def run(engine: BatchEngine, n: int, max_tokens: int) -> tuple[float, float, int]:
    left = threading.Semaphore(0)
    ttft: list[float] = []
    made = [0]
    t0 = time.perf_counter()
    for i in range(n):
        first = [True]

        def emit(e, first=first):
            if isinstance(e, Token):
                if first[0]:
                    ttft.append(time.perf_counter() - t0)
                    first[0] = False
            elif isinstance(e, Done):
                made[0] += e.completion_tokens
                left.release()
        prompt = engine.render_chat([{"role": "user",
                                      "content": f"Write a long story about {TOPICS[i % 8]}."}])
        engine.submit(Job(engine.tokenize(prompt), SamplingParams(max_tokens=max_tokens,
                                                                  temperature=0.7, seed=i), emit))
    for _ in range(n):
        left.acquire()
    wall = time.perf_counter() - t0
    return made[0] / wall, statistics.median(ttft), made[0]


def main() -> None:
    model = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    max_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    engine = BatchEngine(model, n_ctx=1024, slots=8, n_threads=threads)
    run(engine, 1, 8)  # warm-up
    for n in (1, 2, 4, 8):
        rate, ttft, made = run(engine, n, max_tokens)
        print(f"{n} streams: {rate:6.1f} tok/s aggregate, {rate / n:6.1f} per stream, "
              f"median TTFT {ttft * 1000:5.0f} ms, {made} tokens")
    engine.close()


if __name__ == "__main__":
    main()
