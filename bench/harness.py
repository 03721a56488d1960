"""The measuring core of `make bench`: start a server, stream N requests at once, time them at the client.

Both servers are measured by the same code: a `Server` knows how to start one kind of process and
how to read its stream; `run_round` sends N streamed requests at once and times every token event
as it arrives over HTTP. Only what the servers themselves report is taken from them: how many
tokens they generated and how many prompt tokens they read (so a stream that ended early is
normalised per token instead of flattering or penalising anyone).
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from sse import aiter_events

GREEDY = {"temperature": 0, "repeat_penalty": 1.0, "seed": 1}   # same sampling on both sides


@dataclass
class Sample:
    """One streamed request as the client saw it."""
    ttft_ms: float          # request sent -> first token event received
    decode_s: float         # first token event -> last token event
    tokens: int             # completion tokens, as the server counted them
    prompt_tokens: int      # prompt tokens, as the server counted them (cached ones included)
    end_s: float            # request sent -> stream ended

    @property
    def decode_tps(self) -> float | None:
        # n tokens arrive in n-1 intervals after the first one
        return (self.tokens - 1) / self.decode_s if self.tokens > 1 and self.decode_s > 0 else None


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Matched:
    """Settings given to both servers in the opt-in matched mode (bench/run.py --matched); without
    it each server runs on its own defaults, as a user who starts it gets it."""
    parallel: int
    ctx_per_slot: int
    flash_attn: str = "on"


class Server:
    """One server process on 127.0.0.1 and a free port; its output goes to a log file. Only the
    model, address, port and threads are given, plus `matched` settings when asked for."""
    label = "server"
    ready_path = "/health"

    def __init__(self, model: Path, threads: int, log_dir: Path, matched: Matched | None = None):
        self.model, self.threads, self.matched = model, threads, matched
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tail = f"parallel{matched.parallel}-fa-{matched.flash_attn}" if matched else "defaults"
        self.log_path = log_dir / f"{self.label}-{tail}.log"
        self.proc: subprocess.Popen | None = None
        self.slots: int | None = None         # what the server says it runs at once, once started

    def command(self) -> list[str]:
        raise NotImplementedError

    async def read_slots(self, session: aiohttp.ClientSession) -> int | None:
        return None

    async def count_tokens(self, session: aiohttp.ClientSession, text: str) -> int:
        """How many prompt tokens the server makes of `text`."""
        raise NotImplementedError

    async def start(self, timeout: float = 180) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        # own session: a Ctrl-C at the terminal reaches the harness, which stops us cleanly
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BenchError(f"{self.label} exited with {self.proc.returncode} while starting:\n"
                                     f"{self.log_tail()}")
                try:
                    async with session.get(self.url + self.ready_path,
                                           timeout=aiohttp.ClientTimeout(total=2)) as r:
                        ready = r.status == 200
                    if ready:
                        self.slots = await self.read_slots(session)
                        return self
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(0.1)
        self.stop()
        raise BenchError(f"{self.label} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def request(self, prompt: str, max_tokens: int) -> tuple[str, dict]:
        raise NotImplementedError

    def read_event(self, event: str, data: dict) -> tuple[bool, dict | None]:
        """(is a token event, final counts {tokens, prompt_tokens} if this event ends the stream)"""
        raise NotImplementedError

    async def stream(self, session: aiohttp.ClientSession, prompt: str, max_tokens: int) -> Sample:
        path, body = self.request(prompt, max_tokens)
        t0 = time.perf_counter()
        first = last = None
        async with session.post(self.url + path, json=body) as resp:
            if resp.status != 200:
                raise BenchError(f"{self.label} answered {resp.status}: {(await resp.text())[:300]}")
            async for event in aiter_events(resp):
                if event.name == "comment" or event.data == "[DONE]":
                    continue
                is_token, final = self.read_event(event.name, event.json())
                if is_token:
                    last = time.perf_counter()
                    first = first or last
                if final is not None:
                    break
        end = time.perf_counter()
        if final is None or first is None:
            raise BenchError(f"{self.label}: stream ended without tokens or without its final event")
        return Sample(ttft_ms=(first - t0) * 1e3, decode_s=last - first, end_s=end - t0, **final)


class LlamaServer(Server):
    """llama.cpp's own llama-server: native /completion, streamed."""
    label = "llama-server"

    def __init__(self, bin_dir: Path, *a, **kw):
        self.bin = bin_dir / "llama-server"
        super().__init__(*a, **kw)

    def command(self) -> list[str]:
        cmd = [str(self.bin), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
               "-t", str(self.threads)]
        if m := self.matched:
            # -c is the whole KV cache, split evenly over the slots: per slot it matches ours' --ctx
            cmd += ["-np", str(m.parallel), "-c", str(m.ctx_per_slot * m.parallel), "-fa", m.flash_attn,
                    "--no-kv-unified"]
        return cmd

    async def count_tokens(self, session: aiohttp.ClientSession, text: str) -> int:
        async with session.post(self.url + "/tokenize", json={"content": text}) as r:
            return len((await r.json())["tokens"])

    async def read_slots(self, session: aiohttp.ClientSession) -> int | None:
        async with session.get(self.url + "/props") as r:
            return (await r.json()).get("total_slots") if r.status == 200 else None

    def request(self, prompt, max_tokens):
        return "/completion", {"prompt": prompt, "n_predict": max_tokens, "ignore_eos": True,
                               "stream": True, **GREEDY}

    def read_event(self, event, data):
        if "error" in data:
            raise BenchError(f"llama-server error: {data['error']}")
        if data.get("stop"):
            t = data.get("timings", {})
            return bool(data.get("content")), {
                "tokens": int(data.get("tokens_predicted", t.get("predicted_n", 0))),
                "prompt_tokens": int(t.get("prompt_n", 0) + t.get("cache_n", 0))}
        return True, None


class OursServer(Server):
    """This project's ampere-llm-server: POST /generate, streamed (docs/CONTRACTS.md)."""
    label = "ours"
    ready_path = "/readyz"

    def command(self) -> list[str]:
        exe = Path(sys.executable).parent / "ampere-llm-server"
        cmd = [str(exe), "--model", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
               "--threads", str(self.threads)]
        if m := self.matched:
            cmd += ["--parallel", str(m.parallel), "--ctx", str(m.ctx_per_slot), "--max-queue", "16",
                    "--flash-attn", m.flash_attn]
        return cmd

    async def read_slots(self, session: aiohttp.ClientSession) -> int | None:
        return int((await self.metrics(session)).get(("ampere_llm_slots_total", ()), 0)) or None

    async def count_tokens(self, session: aiohttp.ClientSession, text: str) -> int:
        # no tokenize route: the prompt tokens a one-token generation reports
        body = {"prompt": text, "max_tokens": 1, "stream": False, **GREEDY}
        async with session.post(self.url + "/generate", json=body) as r:
            if r.status != 200:
                raise BenchError(f"{self.label} answered {r.status}: {(await r.text())[:300]}")
            return int((await r.json())["usage"]["prompt_tokens"])

    async def metrics(self, session: aiohttp.ClientSession) -> dict:
        """{(sample name, labels as sorted tuple): value} from /metrics."""
        from prometheus_client.parser import text_string_to_metric_families
        async with session.get(self.url + "/metrics") as r:
            text = await r.text()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    async def step_counters(self) -> dict:
        """The engine's per-step accounting now: {"steps": n, "parts": {part: seconds}}."""
        async with aiohttp.ClientSession() as session:
            m = await self.metrics(session)
        parts = {dict(labels)["part"]: v for (name, labels), v in m.items()
                 if name == "ampere_llm_engine_step_seconds_total"}
        # the event loop's share, beside the engine thread (not part of its step)
        parts |= {"loop_" + dict(labels)["part"]: v for (name, labels), v in m.items()
                  if name == "ampere_llm_event_loop_seconds_total"}
        return {"steps": m.get(("ampere_llm_engine_steps_total", ()), 0), "parts": parts}

    def request(self, prompt, max_tokens):
        # no ignore_eos here: the prompts are chosen so greedy decoding runs to max_tokens
        return "/generate", {"prompt": prompt, "max_tokens": max_tokens, "stream": True, **GREEDY}

    def read_event(self, event, data):
        if event == "error":
            raise BenchError(f"ours error: {data.get('error')}")
        if event == "done":
            return False, {"tokens": int(data["usage"]["completion_tokens"]),
                           "prompt_tokens": int(data["usage"]["prompt_tokens"])}
        return event == "message" and "token" in data, None


def counting_prompts(count: int, target_tokens: int, tokens_per_number: float, seed: int = 7) -> list[str]:
    """Distinct prompts of about `target_tokens` tokens: runs of consecutive numbers.

    Greedy decoding keeps counting, so a model that has an end-of-text token still generates the
    full max_tokens; and prompts that differ from their first number on keep both servers' prefix
    caches from skipping the prefill that time-to-first-token is meant to measure."""
    rng = random.Random(seed)
    n = max(2, math.ceil(target_tokens / tokens_per_number))
    starts = rng.sample(range(10_000, 80_000), count)
    return [", ".join(str(s + i) for i in range(n)) + "," for s in starts]


async def tokens_per_number(server: Server) -> float:
    """How many tokens one ', 12345' costs with this model's tokenizer: the difference between 100
    and 50 numbers, so what a server adds to every prompt (BOS, a template) cancels out."""
    async with aiohttp.ClientSession() as session:
        counts = [await server.count_tokens(session, ", ".join(str(10_000 + i) for i in range(k)))
                  for k in (50, 100)]
    return (counts[1] - counts[0]) / 50


async def run_round(server: Server, prompts: list[str], max_tokens: int) -> tuple[list[Sample], float]:
    """Send all prompts at once, one stream each; the samples and the round's wall time in seconds."""
    connector = aiohttp.TCPConnector(limit=len(prompts) + 1)
    timeout = aiohttp.ClientTimeout(total=600, sock_read=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.perf_counter()
        samples = await asyncio.gather(*(server.stream(session, p, max_tokens) for p in prompts))
        return list(samples), time.perf_counter() - t0


def llama_bench(bin_dir: Path, model: Path, threads: int, prompt_tokens: int, gen_tokens: int,
                reps: int, progress=print, flash_attn: str = "on") -> dict:
    """llama-bench pp<prompt> and tg<gen> on the same model and threads; its JSON, trimmed.
    Its progress lines go to `progress` as they come (a loaded box can take a minute here)."""
    cmd = [str(bin_dir / "llama-bench"), "-m", str(model), "-t", str(threads), "-p", str(prompt_tokens),
           "-n", str(gen_tokens), "-r", str(reps), "-fa", flash_attn, "-o", "json", "--progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    errors = []
    for line in proc.stderr:              # the JSON on stdout is small: no pipe can fill meanwhile
        if line.startswith("llama-bench: benchmark"):
            progress("    " + line.strip().removeprefix("llama-bench: "))
        else:
            errors.append(line)
    stdout = proc.stdout.read()
    if proc.wait() != 0:
        raise BenchError(f"llama-bench failed ({proc.returncode}):\n{''.join(errors)[-2000:]}")
    result = {"command": " ".join(cmd)}
    for test in json.loads(stdout):
        kind = "pp" if test["n_gen"] == 0 else "tg"
        result[kind] = {"tokens": test["n_prompt"] or test["n_gen"], "tps": test["avg_ts"],
                        "tps_sd": test["stddev_ts"], "flash_attn": test.get("flash_attn")}
        result["build_commit"] = test.get("build_commit")
        result["build_number"] = test.get("build_number")
        result["cpu_info"] = test.get("cpu_info")
    return result


def llama_bench_tg(bin_dir: Path, model: Path, threads: int, gen_tokens: int, depth: int = 0,
                   flash_attn: str = "on") -> dict[int, float]:
    """One llama-bench tg<gen_tokens> run at depth 0 (the usual tg) and at `depth` (the KV cache
    holding that many tokens first, as a request's prompt does: each token attends to them), tok/s
    by depth. Taken between the servers' single-stream rounds, so the reference sees the same
    neighbours as they do."""
    depths = sorted({0, depth})
    cmd = [str(bin_dir / "llama-bench"), "-m", str(model), "-t", str(threads), "-p", "0",
           "-n", str(gen_tokens), "-d", ",".join(map(str, depths)), "-r", "1", "-fa", flash_attn,
           "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"llama-bench failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return {t.get("n_depth", 0): t["avg_ts"] for t in json.loads(proc.stdout)}


def batched_bench(bin_dir: Path, model: Path, threads: int, prompt_tokens: int, gen_tokens: int,
                  levels: list[int], progress=print, flash_attn: str = "on") -> dict:
    """llama-batched-bench: decode tokens/s of 1..N sequences in one llama_decode each step, with
    no sampling, no HTTP and no scheduling: llama.cpp's own ceiling for what batching can buy on
    these cores, measured in the same run as the servers. {"levels": {N: decode tok/s}, ...}."""
    ctx = max(levels) * (prompt_tokens + gen_tokens) + 64
    cmd = [str(bin_dir / "llama-batched-bench"), "-m", str(model), "-t", str(threads),
           "-c", str(ctx), "-b", "2048", "-ub", "512", "-npp", str(prompt_tokens),
           "-ntg", str(gen_tokens), "-npl", ",".join(map(str, levels)), "-fa", flash_attn,
           "--output-format", "jsonl"]
    if not Path(cmd[0]).is_file():
        raise BenchError(f"{cmd[0]} is missing: run `make setup` (it builds llama-batched-bench)")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines() + proc.stderr.splitlines()
            if line.startswith("{")]
    if proc.returncode != 0 or not rows:
        raise BenchError(f"llama-batched-bench failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    result = {"command": " ".join(cmd),
              "levels": {str(r["pl"]): r["speed_tg"] for r in rows},
              "prefill_tps": {str(r["pl"]): r["speed_pp"] for r in rows}}
    progress("    decode tok/s by sequences: " +
             ", ".join(f"{n}: {v:.1f}" for n, v in result["levels"].items()))
    return result


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile (p95 of 10 runs is the worst but one: no interpolation invents values)."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    return vals[min(len(vals) - 1, max(0, math.ceil(q * len(vals)) - 1))]


def median(values) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds all processes on the host have used, of which this process and its reaped children).
    The difference over a run is what other work took from the cores the servers were measured on."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    host = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    t = os.times()
    return host, t.user + t.system + t.children_user + t.children_system


def _cpu_name() -> str:
    # x86 names the CPU in /proc/cpuinfo; Arm (Ampere) kernels do not, lscpu knows it from the part id
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.TimeoutExpired):
        return os.uname().machine


def machine() -> dict:
    cpu = _cpu_name()
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"cpu": cpu, "arch": os.uname().machine, "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)), "mem_gib": round(mem_kb / 2**20, 1),
            "kernel": os.uname().release, "loadavg_start": os.getloadavg()}
