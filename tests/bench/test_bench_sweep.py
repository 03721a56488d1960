"""`bench/run.py --sweep` in --quick mode on the tiny model: ours alone at each of its own settings.

Speeds are not asserted (the machine is shared); what is checked is that the grid is the one the
service's command line offers, that the defaults ran with no knob flags, that every setting was
measured in every round, and that each "vs defaults" figure pairs a setting's round with the
defaults' round of the same round.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import sweep


@pytest.mark.parametrize("cores, counts", [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]),
                                           (64, [1, 2, 4, 8, 16, 32, 64])])
def test_thread_counts(cores: int, counts: list[int]) -> None:
    assert sweep.thread_counts(cores) == counts


def test_quick_sweep_measures_every_setting(tiny_model: Path, tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "bench/run.py"), "--sweep", "--quick", "--model",
                          str(tiny_model), "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=300, env=os.environ.copy())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "fastest: single-stream decode" in run.stdout and "fastest: aggregate" in run.stdout

    (jpath,) = tmp_path.glob("*-sweep.json")
    res = json.loads(jpath.read_text())
    from ampere_llm_server.cli import Config
    d = res["config"]["defaults"]
    assert (d["threads"], d["flash_attn"], d["parallel"]) == (len(os.sched_getaffinity(0)), Config.flash_attn,
                                                              Config.parallel)
    assert (d["n_batch"], d["prefill_chunk"]) == (Config.batch, Config.prefill_chunk)
    cores = res["machine"]["usable_cores"]
    chunk = Config.prefill_chunk
    assert {(s["threads"], s["flash_attn"], s["prefill_chunk"]) for s in res["settings"]} == {
        (t, fa, None) for t in sweep.thread_counts(cores) for fa in ("on", "off")} | {
        (cores, "on", chunk // 2), (cores, "on", chunk * 2)}
    for s in res["settings"]:
        assert (f"--prefill-chunk {s['prefill_chunk']}" in s["command"]) == bool(s["prefill_chunk"])
    (base,) = [s for s in res["settings"] if s["default"]]
    assert not {"--threads", "--flash-attn", "--prefill-chunk"} & set(base["command"].split())   # as a user gets it
    done = res["config"]["rounds_done"]
    assert done == 2
    for s in res["settings"]:
        assert len(s["rounds"]) == done and s["slots"] >= 1
        for r in s["rounds"]:
            assert r["single"]["tokens"] >= 1 and r["single"]["ttft_ms"] > 0
            assert len(r["multi"]["samples"]) == res["config"]["streams"] == 4
        for m in sweep.MEASURES:
            mine, theirs = sweep.per_round(s["rounds"], m), sweep.per_round(base["rounds"], m)
            assert s["vs_default"][m]["pairs"] == [a / b for a, b in zip(mine, theirs)], (s["name"], m)
        assert s["median"]["aggregate"] > 0
    assert set(base["vs_default"]["decode"]["pairs"]) == {1.0}
    assert set(res["fastest"]) == set(sweep.MEASURES)
    for f in res["fastest"].values():
        assert f["setting"] in {s["name"] for s in res["settings"]} and f["median"] > 0

    md = Path(res["files"]["md"]).read_text()
    assert "| setting | decode tok/s | vs defaults |" in md and "## Fastest per measure" in md
    assert "## Not swept" in md and "n_batch" in md
    png = Path(res["files"]["png"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
