"""`make bench` end to end in --quick mode on the tiny model: it runs, and writes JSON, markdown and a PNG.

Speeds are not asserted (the machine is shared); what is checked is that every figure the report
promises exists and was really measured: both servers, each on its own defaults, streamed tokens at
every level, and ours' per-step breakdown came from its /metrics.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVERS = ("llama-server", "ours")


def test_quick_bench_writes_every_figure(tiny_model: Path, tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "bench/run.py"), "--quick", "--model", str(tiny_model),
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=420,
                         env=os.environ.copy())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "==> goals" in run.stdout and "N=8 ours" in run.stdout      # progress and verdicts shown
    assert "median of paired rounds" in run.stdout and "min-max of 3 pairs" in run.stdout   # spreads shown

    (jpath,) = tmp_path.glob("*.json")
    assert jpath.name.endswith("-defaults.json"), jpath.name
    check_run(json.loads(jpath.read_text()))


def check_run(res: dict) -> None:
    assert {"schema", "started", "duration_s", "machine", "versions", "config", "llama_bench",
            "llama_batched_bench", "concurrency", "ratios", "goals", "files"} <= res.keys()
    assert {"cpu", "cores", "usable_cores", "loadavg_start", "loadavg_end"} <= res["machine"].keys()
    assert res["versions"]["llama_cpp_commit"] and res["versions"]["llama_cpp_python"]
    assert res["llama_bench"]["pp"]["tps"] > 0 and res["llama_bench"]["tg"]["tps"] > 0
    # llama-bench ran with flash attention on, as both servers' defaults
    assert {res["llama_bench"][k]["flash_attn"] for k in ("pp", "tg")} == {True}

    assert [row["streams"] for row in res["concurrency"]] == [1, 2, 4, 8]
    for row in res["concurrency"]:
        assert "error" not in row, row["error"]
        # each server on its own defaults: model, address, port and threads only
        assert not {"-np", "-c", "-fa"} & set(row["commands"]["llama-server"].split())
        assert not {"--parallel", "--ctx", "--flash-attn"} & set(row["commands"]["ours"].split())
        assert row["slots"]["ours"] >= 1 and row["slots"]["llama-server"] >= 1
        steps = row["ours_steps"]                 # ours' engine thread, per decode step
        assert steps["steps"] > 0 and steps["ms_per_step"]["decode"] > 0
        assert set(steps["ms_per_step"]) == {"schedule", "batch", "prefill", "decode", "sample", "detokenize",
                                             "handoff", "loop_deliver", "loop_sse"}
        assert steps["ms_per_step"]["loop_sse"] > 0       # the event loop's share, beside the engine
        assert steps["step_interval_ms"] >= steps["engine_ms_per_step"] > 0
        for who in SERVERS:
            fig = row[who]
            assert fig["streams"] == row["streams"] * len(fig["rounds"])
            assert fig["aggregate_tps"] > 0 and fig["ttft_ms"]["median"] > 0 and fig["ttft_ms"]["p95"] > 0
            assert fig["tokens"]["min"] >= 1 and fig["prompt_tokens"] > 0
        assert set(res["ratios"]["concurrency"][str(row["streams"])]) == {
            "aggregate_vs_llama_server", "ttft_median_vs_llama_server", "ttft_p95_vs_llama_server",
            "per_stream_vs_llama_server"}
    # llama-bench tg took its turn between the single-stream rounds: the reference saw the same box
    level1 = res["concurrency"][0]
    assert len(level1["llama_bench_tg"]) == len(level1["ours"]["rounds"]) and min(level1["llama_bench_tg"]) > 0
    # and at the depth a request decodes at (its prompt in the cache first)
    assert level1["llama_bench_depth"] == res["config"]["prompt_tokens"]
    at_depth = level1["llama_bench_tg_depth"]
    assert len(at_depth) == len(level1["llama_bench_tg"]) and min(at_depth) > 0
    assert set(res["ratios"]["single"]) >= {"decode_vs_llama_bench_tg", "decode_vs_llama_server",
                                            "ttft_median_vs_llama_server", "decode_vs_llama_bench_tg_at_depth"}
    assert res["ratios"]["single"]["decode_vs_llama_bench_tg_at_depth"] > 0
    # every ours / other ratio is the median of per-round pairs, with their spread beside it
    spreads = res["ratios"]["spreads"]
    for key, other, ref in (("decode_vs_llama_server", "llama-server", None),
                            ("decode_vs_llama_bench_tg", None, "llama_bench_tg"),
                            ("decode_vs_llama_bench_tg_at_depth", None, "llama_bench_tg_depth")):
        theirs = level1[ref] if ref else [r["samples"][0]["decode_tps"] for r in level1[other]["rounds"]]
        ours = [r["samples"][0]["decode_tps"] for r in level1["ours"]["rounds"]]
        assert spreads["single"][key]["pairs"] == [a / b for a, b in zip(ours, theirs)], key
        assert res["ratios"]["single"][key] == spreads["single"][key]["median"]
    for row in res["concurrency"]:
        sp = spreads["concurrency"][str(row["streams"])]["aggregate_vs_llama_server"]
        assert len(sp["pairs"]) == len(row["ours"]["rounds"]) and sp["lo"] <= sp["median"] <= sp["hi"]
    for g in res["goals"][:-1]:               # all but the scaling goal (levels are not neighbours)
        assert g["spread"]["n"] >= 1 and g["spread"]["kind"] == "min-max", g
    assert res["goals"][-1]["spread"] is None
    assert "ours_8_vs_1" in res["ratios"]["scaling"]
    # llama.cpp's bare batched decode, the ceiling the scaling goal is read against
    bare = res["llama_batched_bench"]["levels"]
    assert sorted(bare, key=int) == ["1", "2", "4", "8"] and all(v > 0 for v in bare.values())
    assert "-fa on" in res["llama_batched_bench"]["command"]
    assert res["ratios"]["scaling"]["llama_cpp_decode_8_vs_1"] == bare["8"] / bare["1"]
    assert "llama.cpp's bare decode" in res["goals"][-1]["note"]
    assert len(res["goals"]) == 3 + 4 + 1
    assert all(g["met"] in (True, False) for g in res["goals"]), res["goals"]

    png = Path(res["files"]["png"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    md = Path(res["files"]["md"]).read_text()
    assert "## Goals" in md and "## Concurrent streams" in md and "## Where ours' decode step goes" in md
    assert "| goal | value | spread of the paired rounds | target | verdict |" in md
    assert "each server on its own defaults" in md and "llama-bench at depth" in md
