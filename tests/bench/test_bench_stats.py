"""The bench's statistics on known numbers: every ours / other ratio is the median of per-round
pairs (round i of ours over round i of the other, which ran next to it), with the pairs' spread;
the verdict stays the median against the target, and a note says when the pairs straddle it."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import report
import run


def test_paired_ratios_divide_round_by_round() -> None:
    assert report.paired_ratios([11, 18, 48], [10, 20, 40]) == pytest.approx([1.1, 0.9, 1.2])
    # a round without a figure on either side drops out, it does not shift the pairing
    assert report.paired_ratios([11, None, 48], [10, 20, 40]) == pytest.approx([1.1, 1.2])
    with pytest.raises(ValueError):
        report.paired_ratios([1, 2], [1, 2, 3])


def test_spread_is_min_max_below_five_pairs_and_iqr_from_five() -> None:
    few = report.spread([1.1, 0.9, 1.2])
    assert few["median"] == pytest.approx(1.1)
    assert (few["lo"], few["hi"], few["kind"]) == (0.9, 1.2, "min-max")
    assert few["pairs"] == [1.1, 0.9, 1.2]                    # kept in round order
    many = report.spread([0.8, 1.3, 0.9, 1.0, 1.1, 1.2])
    assert many["median"] == pytest.approx(1.05)
    # nearest rank: the 2nd and 5th of 6, values that were measured
    assert (many["lo"], many["hi"], many["kind"]) == (0.9, 1.2, "IQR")
    assert report.spread([]) is None


def _round(tokens: int, wall: float, decode: float, ttft: float, streams: int = 1) -> dict:
    return {"wall_s": wall, "samples": [{"tokens": tokens, "prompt_tokens": 100, "ttft_ms": ttft,
                                         "decode_tps": decode, "decode_s": 1.0, "end_s": wall}
                                        for _ in range(streams)]}


def _row(n: int, ours: list[dict], theirs: list[dict], **extra) -> dict:
    row = {"streams": n, "slots": {"ours": 4, "llama-server": 4}, **extra}
    for who, rounds in (("ours", ours), ("llama-server", theirs)):
        row[who] = run.summarize(rounds) | {"rounds": rounds}
    return row


def _results() -> dict:
    # 1 stream: ours' decode 11, 18, 48 tok/s against llama-server's 10, 20, 40 in the same rounds:
    # pairs 1.1, 0.9, 1.2 (median 1.1), while the ratio of the medians would be 18 / 20 = 0.9
    one = _row(1, [_round(64, 2.0, d, t) for d, t in ((11, 90), (18, 120), (48, 80))],
               [_round(64, 2.0, d, t) for d, t in ((10, 100), (20, 100), (40, 100))],
               llama_bench_tg=[12.0, 20.0, 50.0], llama_bench_tg_depth=[11.0, 18.0, 40.0],
               llama_bench_depth=128)
    # 4 streams, aggregate: ours 100 and 90 tok/s against 80 and 100: pairs 1.25 and 0.9
    four = _row(4, [_round(100, 4.0, 25, 200, 4), _round(90, 4.0, 22, 210, 4)],
                [_round(80, 4.0, 20, 220, 4), _round(100, 4.0, 25, 200, 4)])
    # 8 streams: ours behind in both rounds (0.8, 0.9): a plain miss, no note
    eight = _row(8, [_round(40, 4.0, 10, 300, 8), _round(45, 4.0, 11, 300, 8)],
                 [_round(50, 4.0, 12, 300, 8), _round(50, 4.0, 12, 300, 8)])
    return {"config": {"model": "SmolLM2.gguf"}, "concurrency": [one, four, eight],
            "llama_bench": {"tg": {"tps": 30.0}, "pp": {"tps": 500.0}},
            "llama_batched_bench": {"levels": {"1": 10.0, "8": 20.0}}}


def test_evaluate_pairs_each_round_with_its_neighbour() -> None:
    ratios, goals = report.evaluate(_results())
    single = ratios["single"]
    assert single["decode_vs_llama_server"] == pytest.approx(1.1)           # not 18 / 20
    assert single["ttft_median_vs_llama_server"] == pytest.approx(0.9)      # 0.9, 1.2, 0.8
    # against the llama-bench tg run of the same round: 11/12, 18/20, 48/50
    assert single["decode_vs_llama_bench_tg"] == pytest.approx(11 / 12)     # 0.917, 0.9, 0.96
    assert single["llama_server_decode_vs_llama_bench_tg"] == pytest.approx(10 / 12)   # 0.833, 1.0, 0.8
    assert single["decode_vs_llama_bench_tg_at_depth"] == pytest.approx(1.0)           # 1.0, 1.0, 1.2
    sp = ratios["spreads"]["single"]["decode_vs_llama_server"]
    assert sp["pairs"] == pytest.approx([1.1, 0.9, 1.2]) and (sp["lo"], sp["hi"]) == pytest.approx((0.9, 1.2))
    assert ratios["concurrency"]["4"]["aggregate_vs_llama_server"] == pytest.approx((1.25 + 0.9) / 2)
    assert ratios["spreads"]["concurrency"]["4"]["aggregate_vs_llama_server"]["pairs"] == pytest.approx([1.25, 0.9])

    by_name = {g["goal"]: g for g in goals}
    # median 1.1 >= 1: met, but the rounds went both ways, and the verdict says so
    decode = by_name["single stream: decode ours / llama-server"]
    assert decode["met"] is True and report.WITHIN_SPREAD in decode["note"]
    assert decode["spread"] == {"lo": 0.9, "hi": 1.2, "kind": "min-max", "n": 3}
    # 0.917 >= 0.85 (not Gemma): met, every pair above; the depth ratio rides along in the note
    tg = by_name["single stream: decode ours / llama-bench tg"]
    assert tg["met"] is True and "against tg at depth 128: 1.000" in tg["note"]
    # 8 streams: 0.85 median, both pairs below 1: NOT met, no spread note (a clear miss)
    miss = by_name["8 streams: aggregate ours / llama-server"]
    assert miss["met"] is False and miss["value"] == pytest.approx(0.85)
    assert not (miss["note"] or "").count(report.WITHIN_SPREAD)
    # the scaling goal compares levels minutes apart: a ratio of medians, no pairs
    assert by_name["ours aggregate at 8 streams / ours single stream"]["spread"] is None


def test_verdict_stays_median_against_target() -> None:
    # a median just under the target is NOT met even when the best round beat it
    g = report._goal("x", 0.98, ">=", 1.0, spread=report.spread([0.9, 0.98, 1.05]))
    assert g["met"] is False and g["note"] == report.WITHIN_SPREAD
    # lower-is-better goals straddle the same way
    g = report._goal("ttft", 1.02, "<=", 1.0, "queued", report.spread([0.97, 1.02, 1.1]))
    assert g["met"] is False and g["note"] == f"{report.WITHIN_SPREAD}; queued"
    g = report._goal("ttft", 0.9, "<=", 1.0, spread=report.spread([0.85, 0.9, 0.95]))
    assert g["met"] is True and g["note"] is None
