"""`make bench`: this node's service side by side with llama-bench and llama-server, one run, one model.

1. llama-bench pp<P> and tg<G>: what the llama.cpp build itself does on these cores, and
   llama-batched-bench: its bare decode of 1..8 sequences per step, the ceiling for batching
   (both with flash attention on, as both servers' default).
2. llama-server and ours (ampere-llm-server), each started with only the model, address, port and
   threads: each on its own defaults, what a user gets. For each number of concurrent streams N
   (1, 2, 4, 8), rounds of N streamed requests alternate between them, so a noisy neighbour hurts
   both alike; a server with fewer slots than N queues the rest, as it would for a user. N = 1 is
   the single-stream comparison (time to first token, streamed decode tokens/s). Ours' /metrics
   says where its engine thread's time goes per decode step (engine_step_seconds_total).
   --matched instead starts both at --parallel N per level with the same per-slot context.
Same model, threads, prompt lengths, greedy sampling and max_tokens everywhere.
Writes <out>/<stamp>-<model>-<defaults|matched>.{json,md,png} and prints the ratios against the goals.

3. Opt-in (--pool, or --pool-only): bench/pool_bench.py, tokens/s through the local pool's HAProxy
   with 1 and 2 nodes and the cost per million tokens at OCI's prices.

4. Opt-in (--sweep, instead of 1-2): bench/sweep.py, ours alone at each of its own settings
   (--threads, --flash-attn), to say which is fastest on this node against the service's defaults.

Usage: bench/run.py [--model smollm2|gemma3|tiny|PATH] [--threads N] [--quick] [--matched] [--rounds N]
                    [--levels N...] [--out DIR] [--sweep] [--pool|--pool-only]
Needs AMPERE_LLM_LLAMA_BIN (llama-server, llama-bench, llama-batched-bench) and LLAMA_CPP_LIB_PATH:
`make bench` sets both.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "scripts"))

import aiohttp
import harness
import report
from harness import BenchError, LlamaServer, Matched, OursServer, median, quantile

FULL = {"prompt_tokens": 128, "max_tokens": 128, "runs": 6, "rounds": 5, "levels": [1, 2, 4, 8],
        "bench_reps": 3}
QUICK = {"prompt_tokens": 32, "max_tokens": 32, "runs": 3, "rounds": 1, "levels": [1, 2, 4, 8],
         "bench_reps": 1}


def say(msg: str) -> None:
    print(msg, flush=True)


def resolve_model(name: str) -> Path:
    if name in ("smollm2", "gemma3", "tiny"):
        import small_models
        return Path(getattr(small_models, name)())
    path = Path(name)
    if not path.is_file():
        raise SystemExit(f"bench: model {name!r} is neither smollm2, gemma3, tiny nor an existing file")
    return path.resolve()


def versions(bin_dir: Path) -> dict:
    def pkg(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None
    return {"python": platform.python_version(), "llama_cpp_python": pkg("llama_cpp_python"),
            "ampere_llm_server": pkg("ampere-llm-server"), "aiohttp": pkg("aiohttp"),
            "llama_bin": str(bin_dir), "llama_cpp_lib_path": os.environ.get("LLAMA_CPP_LIB_PATH")}


def summarize(rounds: list[dict]) -> dict:
    """Figures for one server at one level, from its rounds (each: wall_s and samples)."""
    samples = [s for r in rounds for s in r["samples"]]
    return {
        "aggregate_tps": median(sum(s["tokens"] for s in r["samples"]) / r["wall_s"] for r in rounds),
        "ttft_ms": {"median": median(s["ttft_ms"] for s in samples),
                    "p95": quantile([s["ttft_ms"] for s in samples], 0.95)},
        "per_stream_tps": {"median": median(s["decode_tps"] for s in samples),
                           "p5": quantile([s["decode_tps"] for s in samples], 0.05)},
        "tokens": {"min": min(s["tokens"] for s in samples), "max": max(s["tokens"] for s in samples)},
        "prompt_tokens": median(s["prompt_tokens"] for s in samples),
        "streams": len(samples),
    }


def step_delta(before: dict, after: dict) -> dict:
    return {"steps": after["steps"] - before["steps"],
            "parts": {k: v - before["parts"].get(k, 0.0) for k, v in after["parts"].items()}}


def breakdown(rounds: list[dict]) -> dict | None:
    """Ours' engine thread per decode step over a level's rounds: ms per part, and the step
    interval seen from outside (round wall time / steps), whose rest is the event loop, HTTP and
    waiting for the GIL or a core."""
    steps = sum(r["engine"]["steps"] for r in rounds if r.get("engine"))
    if not steps:
        return None
    parts = {}
    for r in rounds:
        for k, v in r["engine"]["parts"].items():
            parts[k] = parts.get(k, 0.0) + v
    wall = sum(r["wall_s"] for r in rounds)
    ms = {k: v / steps * 1e3 for k, v in parts.items()}
    return {"steps": steps, "ms_per_step": ms, "step_interval_ms": wall / steps * 1e3,
            "engine_ms_per_step": sum(v for k, v in ms.items() if not k.startswith("loop_")),
            "tokens_per_step": sum(s["tokens"] for r in rounds for s in r["samples"]) / steps}


async def probe_tg(row: dict, tg_probe, n: int, r: int, rounds: int, cfg: dict) -> None:
    by_depth = await asyncio.to_thread(tg_probe)
    row.setdefault("llama_bench_tg", []).append(by_depth[0])
    depth = max(by_depth)
    row.setdefault("llama_bench_tg_depth", []).append(by_depth[depth])
    row["llama_bench_depth"] = depth
    say(f"    N={n} {'llama-bench':12} {r + 1:>2}/{rounds}: tg{cfg['max_tokens']} {by_depth[0]:7.1f} "
        f"tok/s, at depth {depth} {by_depth[depth]:7.1f} tok/s")


async def measure_level(n: int, cfg: dict, servers: list, prompts, tg_probe=None) -> dict:
    """One level: rounds alternating between the servers (A B, B A, ...), so each round's two runs
    are neighbours and every ratio is a median of per-round pairs (report.evaluate). At 1 stream
    `tg_probe` (llama-bench tg, one run) runs between the two servers' runs of each round, so the
    decode reference shares both servers' neighbours and pairs with each."""
    row: dict = {"streams": n, "slots": {s.label: s.slots for s in servers},
                 "commands": {s.label: " ".join(s.command()) for s in servers}}
    try:
        for s in servers:                       # page the model in, fill caches: not measured
            await harness.run_round(s, prompts(n), min(8, cfg["max_tokens"]))
        rounds = cfg["runs"] if n == 1 else cfg["rounds"]
        raw: dict[str, list] = {s.label: [] for s in servers}
        for r in range(rounds):
            batch = prompts(n)            # the same prompts for both servers in a round
            order = servers if r % 2 == 0 else servers[::-1]
            for i, s in enumerate(order):
                if i == 1 and tg_probe is not None:
                    # between the two servers' runs: adjacent to both, so each pairs with it
                    await probe_tg(row, tg_probe, n, r, rounds, cfg)
                before = await s.step_counters() if isinstance(s, OursServer) else None
                samples, wall = await harness.run_round(s, batch, cfg["max_tokens"])
                rec = {"wall_s": wall, "samples": [dict(vars(x), decode_tps=x.decode_tps) for x in samples]}
                if before is not None:
                    rec["engine"] = step_delta(before, await s.step_counters())
                raw[s.label].append(rec)
                agg = sum(x.tokens for x in samples) / wall
                say(f"    N={n} {s.label:12} {r + 1:>2}/{rounds}: aggregate {agg:7.1f} tok/s, "
                    f"TTFT median {median(x.ttft_ms for x in samples):7.1f} ms, "
                    f"per stream {median(x.decode_tps for x in samples) or 0:7.1f} tok/s, "
                    f"{min(x.tokens for x in samples)}-{max(x.tokens for x in samples)} tokens")
        for label, rounds_ in raw.items():
            row[label] = summarize(rounds_)
            row[label]["rounds"] = rounds_
        row["ours_steps"] = b = breakdown(raw[OursServer.label])
        if b:
            say(f"    N={n} ours per decode step: " + ", ".join(f"{k} {v:.2f}" for k, v in b["ms_per_step"].items())
                + f" ms; step interval {b['step_interval_ms']:.2f} ms, {b['tokens_per_step']:.2f} tokens per step")
    except (BenchError, aiohttp.ClientError, asyncio.TimeoutError) as e:
        # one level failing (a server crashed, a stream broke) still leaves the others' figures
        row["error"] = f"{type(e).__name__}: {e}"
        say(f"    N={n}: FAILED: {row['error']} (server logs: {[str(s.log_path) for s in servers]})")
    return row


async def start_pair(bin_dir: Path, model: Path, threads: int, logs: Path,
                     matched: Matched | None) -> list:
    servers = []
    try:
        servers.append(await LlamaServer(bin_dir, model, threads, logs, matched).start())
        servers.append(await OursServer(model, threads, logs, matched).start())
    except BaseException:
        for s in servers:
            s.stop()
        raise
    return servers


def prompt_supply(tokens_per_number: float, target: int):
    """take(n) -> n fresh prompts: no prompt repeats within a run, so no prefix cache skips a prefill."""
    fresh = iter(harness.counting_prompts(4000, target, tokens_per_number))
    return lambda n: list(itertools.islice(fresh, n))


async def main_async(args) -> Path:
    cfg = dict(QUICK if args.quick else FULL)
    if args.levels:
        cfg["levels"] = sorted({1, *args.levels})
    if args.rounds:
        cfg["runs"] = cfg["rounds"] = args.rounds
    bin_dir = Path(os.environ.get("AMPERE_LLM_LLAMA_BIN", ""))
    if not (bin_dir / "llama-server").is_file() or not (bin_dir / "llama-bench").is_file():
        raise SystemExit("bench: AMPERE_LLM_LLAMA_BIN must name the directory holding llama-server and "
                         "llama-bench (run `make bench`, which builds and exports it)")
    model = resolve_model(args.model)
    threads = args.threads or len(os.sched_getaffinity(0))
    ctx = max(512, -(-(cfg["prompt_tokens"] * 2 + cfg["max_tokens"] + 64) // 256) * 256)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out).resolve()
    mode = "matched" if args.matched else "defaults"
    fa = "on"      # llama-bench and llama-batched-bench: as both servers' default (and --matched)
    stem = out / f"{stamp}-{model.stem}-{mode}"
    logs = out / f"{stamp}-logs"
    t_start, cpu_start = time.monotonic(), harness.cpu_seconds()

    results = {
        "schema": 1, "started": stamp, "machine": harness.machine(), "versions": versions(bin_dir),
        "config": {**cfg, "model": model.name, "model_path": str(model),
                   "model_mib": round(model.stat().st_size / 2**20, 1), "threads": threads,
                   "ctx_per_slot": ctx if args.matched else None, "quick": args.quick,
                   "sampling": harness.GREEDY, "mode": mode, "flash_attn": fa},
    }
    m = results["machine"]
    say(f"==> bench: {model.name} on {m['cpu']} ({m['usable_cores']}/{m['cores']} cores usable, "
        f"load {m['loadavg_start'][0]:.1f}), {threads} threads, prompt ~{cfg['prompt_tokens']} tokens, "
        f"{cfg['max_tokens']} generated, streams {cfg['levels']}, servers on "
        + ("matched settings (--parallel N, same context, flash attention on)" if args.matched
           else "their own defaults"))
    if report.busy(m["loadavg_start"][0], m["usable_cores"]):
        say(f"    warning: load average {m['loadavg_start'][0]:.1f} on {m['usable_cores']} cores: other work is "
            f"running; llama.cpp's threads slow down badly when they share cores, so expect low, noisy figures "
            f"(--threads 1 keeps them from waiting on each other)")
    say(f"==> llama-bench pp{cfg['prompt_tokens']} / tg{cfg['max_tokens']} x{cfg['bench_reps']}")
    lb = await asyncio.to_thread(harness.llama_bench, bin_dir, model, threads, cfg["prompt_tokens"],
                                 cfg["max_tokens"], cfg["bench_reps"], say, fa)
    results["llama_bench"] = lb
    results["versions"]["llama_cpp_commit"] = lb.get("build_commit")
    say(f"    pp{lb['pp']['tokens']} {lb['pp']['tps']:.1f} tok/s, tg{lb['tg']['tokens']} "
        f"{lb['tg']['tps']:.1f} tok/s (llama.cpp {lb.get('build_commit')})")

    say(f"==> llama-batched-bench: {cfg['levels']} sequences, pp{cfg['prompt_tokens']} tg{cfg['max_tokens']}")
    results["llama_batched_bench"] = await asyncio.to_thread(
        harness.batched_bench, bin_dir, model, threads, cfg["prompt_tokens"], cfg["max_tokens"],
        cfg["levels"], say, fa)

    # The tokenizer decides how many numbers make a prompt of the wanted length.
    probe = await LlamaServer(bin_dir, model, threads, logs).start()
    try:
        tpn = await harness.tokens_per_number(probe)
    finally:
        probe.stop()
    prompts = prompt_supply(tpn, cfg["prompt_tokens"])

    results["concurrency"] = []
    servers = [] if args.matched else await start_pair(bin_dir, model, threads, logs, None)
    try:
        if servers:
            say("    on their defaults: " + ", ".join(f"{s.label} runs {s.slots} slot(s)" for s in servers))
        for n in cfg["levels"]:
            rounds = cfg["runs"] if n == 1 else cfg["rounds"]
            if args.matched:
                servers = await start_pair(bin_dir, model, threads, logs, Matched(n, ctx))
            say(f"==> {n} concurrent stream{'s' * (n > 1)}: "
                + " vs ".join(f"{s.label} ({s.slots} slots)" for s in servers)
                + f", {rounds} round{'s' * (rounds > 1)} each")
            probe = (lambda: harness.llama_bench_tg(bin_dir, model, threads, cfg["max_tokens"],
                                                    depth=cfg["prompt_tokens"])) if n == 1 else None
            try:
                results["concurrency"].append(await measure_level(n, cfg, servers, prompts, probe))
            finally:
                if args.matched:
                    for s in servers:
                        s.stop()
    finally:
        for s in servers:
            s.stop()

    results["machine"]["loadavg_end"] = os.getloadavg()
    results["duration_s"] = round(time.monotonic() - t_start, 1)
    (host0, own0), (host1, own1) = cpu_start, harness.cpu_seconds()
    results["machine"]["other_cpu_share"] = round(
        max(0.0, (host1 - host0) - (own1 - own0)) / (results["duration_s"] * (os.cpu_count() or 1)), 3)
    results["ratios"], results["goals"] = report.evaluate(results)
    # not with_suffix: model names hold dots (SmolLM2-135M-Instruct.Q4_1)
    files = {k: stem.parent / f"{stem.name}.{k}" for k in ("json", "md", "png")}
    results["files"] = {k: str(v) for k, v in files.items()}
    results["files"]["logs"] = str(logs)
    out.mkdir(parents=True, exist_ok=True)
    report.plot(results, files["png"])
    files["md"].write_text(report.markdown(results))
    files["json"].write_text(json.dumps(results, indent=1))
    say(report.console(results))
    return stem


def pool_errors() -> tuple:
    """The pool part's own failures (seed converge, HAProxy, a node), reported like BenchError."""
    if "pool_bench" not in sys.modules:
        return ()
    import pool_bench
    return (pool_bench.local.PoolError,)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2", help="smollm2 (default), gemma3, tiny, or a GGUF path")
    p.add_argument("--threads", type=int, default=0, help="default: the cores this process may use")
    p.add_argument("--quick", action="store_true", help="short smoke run (seconds, not minutes)")
    p.add_argument("--levels", type=int, nargs="+", help="concurrent streams to measure (1 is always in)")
    p.add_argument("--rounds", type=int, help="rounds per level for each server (default: 6 at 1 stream, 5 above: "
                   "enough pairs for an interquartile range)")
    p.add_argument("--matched", action="store_true",
                   help="both servers at --parallel N for N streams, the same per-slot context and "
                        "flash attention on, instead of each on its own defaults")
    p.add_argument("--out", default=str(HERE / "results"), help="where results go (default bench/results)")
    p.add_argument("--sweep", action="store_true",
                   help="instead of the comparison: ours alone at each --threads (1 .. the usable cores) and "
                        "--flash-attn setting, single-stream decode, TTFT and aggregate at 4 streams against "
                        "the service's defaults (bench/sweep.py; ~10 min on a 2-core box, seconds with --quick)")
    p.add_argument("--pool", action="store_true",
                   help="also: tokens/s through the local pool's HAProxy with 1 and 2 nodes, and $ per "
                        "million tokens at OCI prices (bench/pool_bench.py; boots a seed and nodes: minutes)")
    p.add_argument("--pool-only", action="store_true", help="only the --pool part")
    args = p.parse_args(argv)
    try:
        if args.sweep:
            import sweep
            versions_ = versions(Path(os.environ.get("AMPERE_LLM_LLAMA_BIN", "")))
            asyncio.run(sweep.main_async(args, resolve_model(args.model), versions_, say))
        elif not args.pool_only:
            asyncio.run(main_async(args))
        if args.pool or args.pool_only:
            import pool_bench  # only here: it needs root, haproxy and systemd-nspawn
            res = pool_bench.run(quick=args.quick, say=say)
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            path = Path(args.out).resolve() / f"{stamp}-pool.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(res, indent=1))
            say(f"==> pool figures: {path}")
    except pool_errors() as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:                 # servers were already stopped by the finally blocks
        print("bench: interrupted, nothing written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
