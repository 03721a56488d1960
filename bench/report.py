"""What a bench run means: ratios against the issues' goals, and the run as markdown, console text and a plot."""
from __future__ import annotations

import statistics
import textwrap
from pathlib import Path

from harness import quantile

OURS, LS = "ours", "llama-server"
COLORS = {OURS: "#d9730d", LS: "#3b6ea5", "llama-bench": "#4f9a4f"}


def median(values: list[float]) -> float:
    return statistics.median(values)


def _ratio(a, b):
    return a / b if a is not None and b else None


def paired_ratios(ours: list, theirs: list) -> list[float]:
    """Round i of one over round i of the other, in round order. The two runs of a round ran back to
    back and so shared the same neighbours, which a ratio of the two sides' medians would mix up:
    on a noisy box a slow round of one side would meet a fast round of the other."""
    if len(ours) != len(theirs):
        raise ValueError(f"pairing {len(ours)} rounds with {len(theirs)}: every round needs both sides")
    return [a / b for a, b in zip(ours, theirs) if a is not None and b]


def spread(ratios: list[float]) -> dict | None:
    """The median of paired ratios and how far the rounds disagree: the min-max of fewer than 5
    pairs, the interquartile range (nearest rank, values that were measured) of 5 or more."""
    if not ratios:
        return None
    if len(ratios) >= 5:
        lo, hi, kind = quantile(ratios, 0.25), quantile(ratios, 0.75), "IQR"
    else:
        lo, hi, kind = min(ratios), max(ratios), "min-max"
    return {"median": statistics.median(ratios), "lo": lo, "hi": hi, "kind": kind, "pairs": list(ratios)}


def per_round(row: dict, who: str, measure: str) -> list:
    """One figure per round of `who` at this level, in round order: its aggregate tokens/s, or the
    median over the round's streams of their decode tokens/s or time to first token."""
    out = []
    for r in row[who].get("rounds", []):
        if measure == "aggregate":
            out.append(sum(x["tokens"] for x in r["samples"]) / r["wall_s"] if r["wall_s"] else None)
        else:
            out.append(_median_or_none(x[{"decode": "decode_tps", "ttft": "ttft_ms"}[measure]]
                                       for x in r["samples"]))
    return out


def _median_or_none(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _paired(row: dict, measure: str, other: str | list = LS, who: str = OURS) -> dict | None:
    """`who` over `other` (a server, or a list of reference figures, one per round) at this level."""
    theirs = other if isinstance(other, list) else per_round(row, other, measure)
    return spread(paired_ratios(per_round(row, who, measure), theirs))


def _median_of(pairs: dict | None, fallback):
    # a run without rounds to pair (an old JSON) keeps its ratio of medians
    return pairs["median"] if pairs else fallback


def _level(results: dict, n: int) -> dict | None:
    return next((r for r in results["concurrency"] if r["streams"] == n and OURS in r and LS in r), None)


def _alternating(results: dict) -> bool:
    return bool((_level(results, 1) or {}).get("llama_bench_tg"))


def single(results: dict) -> dict:
    """The single-stream figures (the N=1 level)."""
    row = _level(results, 1) or {}
    def pick(who):
        return {"decode_tps": row[who]["per_stream_tps"]["median"],
                "ttft_ms": row[who]["ttft_ms"]} if who in row else None

    # llama-bench tg run between the single-stream rounds (same neighbours) when there is one
    alternating = row.get("llama_bench_tg")
    tg = median(alternating) if alternating else results["llama_bench"]["tg"]["tps"]
    # and at the depth the requests decode at (their prompt in the KV cache), when measured
    at_depth = row.get("llama_bench_tg_depth")
    return {LS: pick(LS), OURS: pick(OURS), "llama_bench_tg": tg,
            "llama_bench_tg_depth": median(at_depth) if at_depth else None,
            "llama_bench_depth": row.get("llama_bench_depth"),
            "llama_bench_pp": results["llama_bench"]["pp"]["tps"]}


def tg_goal(model: str) -> float:
    """Issue 18's floor for streamed decode / llama-bench tg: Gemma 3 0.95, other models 0.85."""
    return 0.95 if "gemma" in model.lower() else 0.85


def evaluate(results: dict) -> tuple[dict, list[dict]]:
    """(ratios, goals): every goal of issue 18 (and 7's scaling) with its measured value and
    whether it is met. Every ours / llama-server and ours / llama-bench tg ratio is the median of
    paired ratios (each round of ours over the other's adjacent round), with their spread in
    ratios["spreads"] and on each goal; the verdict stays median against target."""
    s = single(results)
    ours, ls = s[OURS] or {}, s[LS] or {}
    row1 = _level(results, 1) or {}
    def ttft(d, k):
        return (d.get("ttft_ms") or {}).get(k)

    def tg_pairs(who, key):
        # the llama-bench tg run taken within the same round, between the two servers' runs
        runs = row1.get(key)
        if row1 and runs and len(runs) == len(row1[who].get("rounds", [])):
            return _paired(row1, "decode", runs, who)
        return None

    spreads = {"single": {}, "concurrency": {}}
    if row1:
        spreads["single"] = {
            "decode_vs_llama_bench_tg": tg_pairs(OURS, "llama_bench_tg"),
            "decode_vs_llama_server": _paired(row1, "decode"),
            "ttft_median_vs_llama_server": _paired(row1, "ttft"),
            "llama_server_decode_vs_llama_bench_tg": tg_pairs(LS, "llama_bench_tg"),
            "decode_vs_llama_bench_tg_at_depth": tg_pairs(OURS, "llama_bench_tg_depth"),
            "llama_server_decode_vs_llama_bench_tg_at_depth": tg_pairs(LS, "llama_bench_tg_depth"),
        }
    sp = spreads["single"]

    def med(key, fallback):
        return _median_of(sp.get(key), fallback)

    ratios = {"single": {
        "decode_vs_llama_bench_tg": med("decode_vs_llama_bench_tg",
                                        _ratio(ours.get("decode_tps"), s["llama_bench_tg"])),
        "decode_vs_llama_server": med("decode_vs_llama_server", _ratio(ours.get("decode_tps"), ls.get("decode_tps"))),
        "ttft_median_vs_llama_server": med("ttft_median_vs_llama_server",
                                           _ratio(ttft(ours, "median"), ttft(ls, "median"))),
        # a tail is not a per-round figure: the p95 of all streams of each side
        "ttft_p95_vs_llama_server": _ratio(ttft(ours, "p95"), ttft(ls, "p95")),
        "llama_server_decode_vs_llama_bench_tg": med("llama_server_decode_vs_llama_bench_tg",
                                                     _ratio(ls.get("decode_tps"), s["llama_bench_tg"])),
        "decode_vs_llama_bench_tg_at_depth": med("decode_vs_llama_bench_tg_at_depth",
                                                 _ratio(ours.get("decode_tps"), s["llama_bench_tg_depth"])),
        "llama_server_decode_vs_llama_bench_tg_at_depth": med(
            "llama_server_decode_vs_llama_bench_tg_at_depth", _ratio(ls.get("decode_tps"), s["llama_bench_tg_depth"])),
    }, "concurrency": {}, "scaling": {}}
    depth = sp.get("decode_vs_llama_bench_tg_at_depth")
    depth_note = depth and (f"against tg at depth {s['llama_bench_depth']}: {depth['median']:.3f}, "
                            f"paired rounds {spread_text(depth)}")
    goals = [
        _goal("single stream: decode ours / llama-bench tg", ratios["single"]["decode_vs_llama_bench_tg"], ">=",
              tg_goal(results["config"]["model"]), depth_note, sp.get("decode_vs_llama_bench_tg")),
        _goal("single stream: decode ours / llama-server", ratios["single"]["decode_vs_llama_server"], ">=", 1.0,
              spread=sp.get("decode_vs_llama_server")),
        _goal("single stream: TTFT median ours / llama-server", ratios["single"]["ttft_median_vs_llama_server"],
              "<=", 1.0, spread=sp.get("ttft_median_vs_llama_server")),
    ]
    for row in results["concurrency"]:
        n = row["streams"]
        if OURS not in row or LS not in row:
            goals.append(_goal(f"{_streams(n)}: aggregate ours / llama-server", None, ">=", 1.0,
                               row.get("error", "not measured")))
            continue
        o, theirs = row[OURS], row[LS]
        pairs = spreads["concurrency"][str(n)] = {
            "aggregate_vs_llama_server": _paired(row, "aggregate"),
            "ttft_median_vs_llama_server": _paired(row, "ttft"),
            "per_stream_vs_llama_server": _paired(row, "decode"),
        }
        ratios["concurrency"][str(n)] = {
            "aggregate_vs_llama_server": _median_of(pairs["aggregate_vs_llama_server"],
                                                    _ratio(o["aggregate_tps"], theirs["aggregate_tps"])),
            "ttft_median_vs_llama_server": _median_of(pairs["ttft_median_vs_llama_server"],
                                                      _ratio(o["ttft_ms"]["median"], theirs["ttft_ms"]["median"])),
            "ttft_p95_vs_llama_server": _ratio(o["ttft_ms"]["p95"], theirs["ttft_ms"]["p95"]),
            "per_stream_vs_llama_server": _median_of(pairs["per_stream_vs_llama_server"],
                                                     _ratio(o["per_stream_tps"]["median"],
                                                            theirs["per_stream_tps"]["median"])),
        }
        goals.append(_goal(f"{_streams(n)}: aggregate ours / llama-server",
                           ratios["concurrency"][str(n)]["aggregate_vs_llama_server"], ">=", 1.0,
                           _slots_note(row), pairs["aggregate_vs_llama_server"]))
    top = max(r["streams"] for r in results["concurrency"])
    base, high = _level(results, 1), _level(results, top)
    if top > 1:
        for who, key in ((OURS, "ours"), (LS, "llama_server")):
            ratios["scaling"][f"{key}_{top}_vs_1"] = _ratio(high and high[who]["aggregate_tps"],
                                                            base and base[who]["aggregate_tps"])
        # llama-server's own scaling, and llama.cpp's bare decode (llama-batched-bench: no sampling,
        # no HTTP), say what this model and these cores allow at all
        theirs = ratios["scaling"][f"llama_server_{top}_vs_1"]
        bare = (results.get("llama_batched_bench") or {}).get("levels", {})
        ceiling = ratios["scaling"][f"llama_cpp_decode_{top}_vs_1"] = _ratio(bare.get(str(top)),
                                                                             bare.get("1"))
        note = "; ".join(x for x in (high and _slots_note(high),
                                     theirs and f"llama-server's own: {theirs:.2f}",
                                     ceiling and f"llama.cpp's bare decode: {ceiling:.2f}") if x)
        # levels' rounds are minutes apart, not neighbours: a ratio of medians, no pairs
        goals.append(_goal(f"ours aggregate at {top} streams / ours single stream",
                           ratios["scaling"][f"ours_{top}_vs_1"], ">=", 2.0, note or None))
    ratios["spreads"] = spreads
    return ratios, goals


def _slots_note(row: dict) -> str | None:
    """Who ran fewer slots than there were streams (the rest queued)."""
    short = [f"{who} {k} slot{'s' * (k > 1)}" for who, k in (row.get("slots") or {}).items()
             if k and k < row["streams"]]
    return f"queued beyond the slots: {', '.join(short)}" if short else None


def _streams(n: int) -> str:
    return f"{n} stream{'s' * (n > 1)}"


WITHIN_SPREAD = "within the rounds' spread"


def _goal(name, value, op, target, note=None, spread=None) -> dict:
    """The verdict is the median against the target, nothing else; when the paired rounds fall on
    both sides of the target the note says so: neither a clear miss nor a clear win."""
    met = None if value is None else (value >= target if op == ">=" else value <= target)
    if spread and spread["lo"] < target < spread["hi"]:
        note = "; ".join(x for x in (WITHIN_SPREAD, note) if x)
    return {"goal": name, "value": value, "target": f"{op} {target:g}", "met": met, "note": note,
            "spread": spread and {k: spread[k] for k in ("lo", "hi", "kind")} | {"n": len(spread["pairs"])}}


def spread_text(sp: dict | None) -> str:
    if not sp:
        return "—"
    n = sp["n"] if "n" in sp else len(sp["pairs"])
    return f"{sp['lo']:.3f}-{sp['hi']:.3f}, {sp['kind']} of {n} pair{'s' * (n != 1)}"


def _fmt(v, spec=".1f"):
    return "—" if v is None else format(v, spec)


def _verdict(g):
    return {True: "met", False: "NOT met", None: "not measured"}[g["met"]]


def busy(load: float, cores: int) -> bool:
    return load > cores * 0.75


def _noisy(results: dict) -> str | None:
    """Other processes' share of the CPU during the run (their CPU seconds / all cores' seconds)."""
    share = results["machine"].get("other_cpu_share") or 0
    if share > 0.05:
        return (f"other processes used {share:.0%} of this machine's CPU during the run: absolute figures "
                f"are low and ratios noisy (rounds alternate between the servers, which keeps the "
                f"comparison fair but not quiet); rerun on an idle machine for figures to quote")
    return None


def _fa(config: dict) -> str:
    if config.get("mode") == "defaults":
        return "each server on its own defaults"
    if config.get("mode") == "matched":
        return "matched settings (--parallel N, flash attention on)"
    if "flash_attn" not in config:  # runs from before the option: llama-server on its default
        return "off in ours, auto in llama-server"
    return f"flash attention {config['flash_attn']} on every tool"


PARTS = ("decode", "prefill", "sample", "detokenize", "handoff", "batch", "schedule")
PART_NAMES = {"decode": "llama_decode, generating", "prefill": "llama_decode, reading prompts",
              "sample": "sampling", "detokenize": "detokenise + stop strings",
              "handoff": "hand-off to the event loop", "batch": "building the batch",
              "schedule": "admission and cancellation"}
# The event loop's time per step, beside the engine thread's (harness.step_counters).
LOOP_PARTS = {"loop_deliver": "event loop (beside): taking the engine's events",
              "loop_sse": "event loop (beside): SSE writes to the clients"}


def step_rows(results: dict) -> list[tuple[int, dict]]:
    """(streams, ours' per-step figures) of every level that has them."""
    return [(r["streams"], r["ours_steps"]) for r in results["concurrency"] if r.get("ours_steps")]


def _breakdown_md(results: dict) -> list[str]:
    rows = step_rows(results)
    if not rows:
        return []
    tg = single(results)["llama_bench_tg"]
    lines = ["", "## Where ours' decode step goes", "",
             "Ours' engine thread, per decode step, read from its `/metrics` "
             "(`engine_step_seconds_total{part}` / `engine_steps_total`) over the measured rounds; the "
             "step interval is the rounds' wall time / steps, so its rest is what the engine thread "
             "did not spend working: the event loop's HTTP and SSE writes holding the GIL or a core, "
             "and the client. llama-bench tg's own time per token: "
             f"{1e3 / tg:.2f} ms.", "",
             "| ms per step | " + " | ".join(f"{n} stream{'s' * (n > 1)}" for n, _ in rows) + " |",
             "|---|" + "---|" * len(rows)]
    for part in PARTS:
        lines.append(f"| {PART_NAMES[part]} | " + " | ".join(
            _fmt(b["ms_per_step"].get(part), ".3f") for _, b in rows) + " |")
    lines.append("| engine thread, all parts | " + " | ".join(
        _fmt(b["engine_ms_per_step"], ".3f") for _, b in rows) + " |")
    for part, name in LOOP_PARTS.items():
        if any(part in b["ms_per_step"] for _, b in rows):
            lines.append(f"| {name} | " + " | ".join(
                _fmt(b["ms_per_step"].get(part), ".3f") for _, b in rows) + " |")
    lines.append("| step interval (wall / steps) | " + " | ".join(
        _fmt(b["step_interval_ms"], ".3f") for _, b in rows) + " |")
    lines.append("| tokens per step | " + " | ".join(_fmt(b["tokens_per_step"], ".2f") for _, b in rows) + " |")
    return lines


def _concurrency_rows(results):
    for row in results["concurrency"]:
        if OURS in row and LS in row:
            yield row, row[LS], row[OURS]


def markdown(results: dict) -> str:
    c, m, v, lb = results["config"], results["machine"], results["versions"], results["llama_bench"]
    s = single(results)
    lines = [f"# Bench {results['started']}: {c['model']}", "",
             f"{m['cpu']}, {m['usable_cores']}/{m['cores']} cores usable, {m['mem_gib']} GiB; "
             f"{c['threads']} threads; {_fa(c)}; llama.cpp "
             f"{v.get('llama_cpp_commit')}; llama-cpp-python "
             f"{v['llama_cpp_python']}; ampere-llm-server {v['ampere_llm_server']}; load average "
             f"{m['loadavg_start'][0]:.1f} at start; other processes' CPU share during the run "
             f"{m.get('other_cpu_share', 0):.0%}; {results['duration_s']} s.", "",
             f"Prompts of ~{c['prompt_tokens']} tokens, {c['max_tokens']} tokens generated, greedy"
             + (f", per-slot context {c['ctx_per_slot']}" if c.get("ctx_per_slot") else "")
             + "; every figure is measured at the HTTP client from streamed token events, except "
             "llama-bench's (flash attention "
             f"{lb['tg'].get('flash_attn') and 'on' or 'off'} there, as in both servers' defaults).", ""]
    first = next((r for r in results["concurrency"] if r.get("commands")), None)
    if first:
        lines += ["Servers as started" + (" (at 1 stream)" if c.get("mode") == "matched" else "") + ":", ""]
        lines += [f"- {who}: `{cmd}`" + (f" ({first['slots'][who]} slots)" if (first.get("slots") or {}).get(who)
                                          else "") for who, cmd in first["commands"].items()]
        lines.append("")
    if note := _noisy(results):
        lines += [f"> Note: {note}.", ""]
    lines += ["## Goals", "",
              "Each ratio is the median of paired ratios: every round of ours over the other side's "
              "adjacent round (at 1 stream, over the llama-bench tg run taken between the servers' runs), "
              "which saw the same neighbours; the spread is those pairs' min-max (interquartile range "
              "from 5 pairs). The verdict is the median against the target.", "",
              "| goal | value | spread of the paired rounds | target | verdict |", "|---|---|---|---|---|"]
    for g in results["goals"]:
        lines.append(f"| {g['goal']} | {_fmt(g['value'], '.3f')} | {spread_text(g.get('spread'))} | "
                     f"{g['target']} | {_verdict(g)}{' (' + g['note'] + ')' if g.get('note') else ''} |")
    lines += ["", "## Single stream", "", "| | decode tok/s | TTFT median ms | TTFT p95 ms |", "|---|---|---|---|",
              f"| llama-bench | {_fmt(s['llama_bench_tg'])} (tg{lb['tg']['tokens']}"
              f"{', median of the runs taken between the two servers' if _alternating(results) else ''}) | "
              f"{_fmt(c['prompt_tokens'] / lb['pp']['tps'] * 1e3)} (pp{lb['pp']['tokens']} alone) | |"]
    if s["llama_bench_tg_depth"]:
        lines.append(f"| llama-bench at depth {s['llama_bench_depth']} | {_fmt(s['llama_bench_tg_depth'])} "
                     f"(tg{lb['tg']['tokens']} after {s['llama_bench_depth']} tokens in the cache, as a request's "
                     f"decode follows its prompt) | | |")
    for who in (LS, OURS):
        if s[who]:
            lines.append(f"| {who} | {_fmt(s[who]['decode_tps'])} | {_fmt(s[who]['ttft_ms']['median'])} | "
                         f"{_fmt(s[who]['ttft_ms']['p95'])} |")
    lines += ["", "## Concurrent streams", "",
              "| streams | llama-server aggregate tok/s | ours aggregate tok/s | ratio (median of paired rounds) "
              "| TTFT median ms (ls / ours) "
              "| TTFT p95 ms (ls / ours) | per-stream tok/s (ls / ours) | tokens per stream (ours) |",
              "|---|---|---|---|---|---|---|---|"]
    for row, theirs, o in _concurrency_rows(results):
        r = results["ratios"]["concurrency"][str(row["streams"])]
        lines.append(f"| {row['streams']}{' *' if _slots_note(row) else ''} | {_fmt(theirs['aggregate_tps'])} | "
                     f"{_fmt(o['aggregate_tps'])} | {_fmt(r['aggregate_vs_llama_server'], '.2f')} | "
                     f"{_fmt(theirs['ttft_ms']['median'])} / {_fmt(o['ttft_ms']['median'])} | "
                     f"{_fmt(theirs['ttft_ms']['p95'])} / {_fmt(o['ttft_ms']['p95'])} | "
                     f"{_fmt(theirs['per_stream_tps']['median'])} / {_fmt(o['per_stream_tps']['median'])} | "
                     f"{o['tokens']['min']}-{o['tokens']['max']} |")
    lines += _breakdown_md(results)
    if bb := results.get("llama_batched_bench"):
        lines += ["", "llama-batched-bench, llama.cpp's bare decode of N sequences per step (no sampling, "
                  "no HTTP, no scheduling; the ceiling for both servers), tok/s: " +
                  ", ".join(f"{n}: {_fmt(v)}" for n, v in bb["levels"].items()) + "."]
    for row in results["concurrency"]:
        if note := _slots_note(row):
            lines.append(f"\n\\* {row['streams']} streams: {note}.")
        if row.get("error"):
            lines.append(f"\n{row['streams']} streams failed: {row['error']}")
    return "\n".join(lines) + "\n"


def console(results: dict) -> str:
    out = ["", f"==> goals (issue 18), {_fa(results['config'])}: the median of paired rounds, their spread, "
               f"the target"]
    width = max(len(g["goal"]) for g in results["goals"])
    spreads = [spread_text(g.get("spread")) for g in results["goals"]]
    sw = max(len(x) for x in spreads)
    for g, sp in zip(results["goals"], spreads):
        out.append(f"  {g['goal']:<{width}}  {_fmt(g['value'], '.3f'):>6}  {sp:<{sw}}  {g['target']:<7}  "
                   f"{_verdict(g)}{'  (' + g['note'] + ')' if g.get('note') else ''}")
    for n, b in step_rows(results):
        if n in (1, max(r["streams"] for r in results["concurrency"])):
            out.append(f"  ours per step at {_streams(n)}: " + ", ".join(
                f"{k} {b['ms_per_step'].get(k, 0):.2f}" for k in PARTS) +
                f" ms; interval {b['step_interval_ms']:.2f} ms")
    if note := _noisy(results):
        out.append(f"  note: {note}")
    out.append(f"==> wrote {results['files']['md']}, .json and .png ({results['duration_s']} s)")
    return "\n".join(out)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, m, v = results["config"], results["machine"], results["versions"]
    s = single(results)
    fig, axes = plt.subplots(2, 4, figsize=(22, 9.5))
    fig.suptitle(f"{c['model']} · {c['threads']} threads · {_fa(c)} · {m['cpu']}"
                 f" · llama.cpp {str(v.get('llama_cpp_commit'))[:9]}"
                 f" · prompt ~{c['prompt_tokens']} tok, {c['max_tokens']} generated · {results['started']}"
                 f" · other processes' CPU share {m.get('other_cpu_share', 0):.0%}", fontsize=11)

    def bars(ax, labels, values, colors, title, unit):
        xs = range(len(labels))
        b = ax.bar(xs, [x or 0 for x in values], color=colors, width=0.6)
        ax.set_xticks(list(xs), labels)
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.bar_label(b, labels=[_fmt(x) for x in values], padding=2)
        ax.margins(y=0.18)

    # 1. single-stream decode
    names = ["llama-bench tg", LS, OURS]
    vals = [s["llama_bench_tg"], (s[LS] or {}).get("decode_tps"), (s[OURS] or {}).get("decode_tps")]
    bars(axes[0, 0], names, vals, [COLORS["llama-bench"], COLORS[LS], COLORS[OURS]],
         "Single stream: decode (higher is better)", "tokens/s")

    # 2. single-stream TTFT, median and p95, with prefill alone as the floor
    ax = axes[0, 1]
    for i, who in enumerate((LS, OURS)):
        t = (s[who] or {}).get("ttft_ms") or {}
        b = ax.bar([i - 0.17, i + 0.17], [t.get("median") or 0, t.get("p95") or 0], width=0.32,
                   color=COLORS[who], alpha=1.0)
        b[1].set_alpha(0.5)
        ax.bar_label(b, labels=[f"{_fmt(t.get('median'))}\nmedian", f"{_fmt(t.get('p95'))}\np95"],
                     padding=2, fontsize=8)
    floor = c["prompt_tokens"] / s["llama_bench_pp"] * 1e3
    ax.axhline(floor, color=COLORS["llama-bench"], ls="--", lw=1.2,
               label=f"prefill alone at llama-bench pp{results['llama_bench']['pp']['tokens']} speed: {floor:.0f} ms")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xticks([0, 1], [LS, OURS])
    ax.set_title("Single stream: time to first token (lower is better)")
    ax.set_ylabel("ms")
    ax.margins(y=0.25)

    # 3. goals as a table
    ax = axes[0, 2]
    ax.axis("off")
    ax.set_title("Goals")
    mark = {True: "✓", False: "✗", None: "–"}
    rows = [[g["goal"], _fmt(g["value"], ".3f"),
             (f"{g['spread']['lo']:.2f}-{g['spread']['hi']:.2f}" if g.get("spread") else "—"), g["target"],
             mark[g["met"]] + ("*" if g.get("note") else "")] for g in results["goals"]]
    table = ax.table(cellText=rows, colLabels=["goal", "median", "spread", "target", "met"],
                     bbox=[-0.08, 0.3, 1.16, 0.66], colWidths=[0.58, 0.09, 0.16, 0.1, 0.05], cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.35)
    for (r, col), cell in table.get_celld().items():
        if r > 0 and col == 4:
            met = results["goals"][r - 1]["met"]
            cell.set_facecolor({True: "#d5efd5", False: "#f6d5d5", None: "#eeeeee"}[met])
    notes = [f"* {g['goal']}: {g['note']}" for g in results["goals"] if g.get("note")]
    if notes:
        ax.text(0.0, 0.02, "\n".join(textwrap.fill(n, 95, subsequent_indent="   ") for n in notes[:4]),
                fontsize=7.5, va="bottom", transform=ax.transAxes)

    # 4-6. against concurrent streams
    panels = [(axes[1, 0], lambda d: d["aggregate_tps"], None,
               "Aggregate: completion tokens / round time (higher is better)", "tokens/s"),
              (axes[1, 1], lambda d: d["ttft_ms"]["median"], lambda d: d["ttft_ms"]["p95"],
               "Time to first token: median, p95 dashed (lower is better)", "ms"),
              (axes[1, 2], lambda d: d["per_stream_tps"]["median"], None, "Per-stream decode, median", "tokens/s")]
    rows = list(_concurrency_rows(results))
    ns = [row["streams"] for row, _, _ in rows]
    for ax, get, get2, title, unit in panels:
        for who, dy in ((LS, 7), (OURS, -13)):     # labels above / below: close values stay legible
            ys = [get(row[who]) for row, _, _ in rows]
            ax.plot(ns, ys, "o-", color=COLORS[who], label=who)
            if get2:
                ax.plot(ns, [get2(row[who]) for row, _, _ in rows], "o--", color=COLORS[who], alpha=0.6)
            for x, y in zip(ns, ys):
                if y is not None:
                    ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(0, dy), ha="center",
                                fontsize=8, color=COLORS[who])
        bare = (results.get("llama_batched_bench") or {}).get("levels", {})
        if ax is axes[1, 0] and bare:   # the ceiling: decode alone, no prefill, sampling or HTTP
            ax.plot(ns, [bare.get(str(n)) for n in ns], "s:", color=COLORS["llama-bench"],
                    label="llama-batched-bench decode (ceiling)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("concurrent streams" + (" (--parallel N)" if results["config"].get("mode") == "matched" else ""))
        ax.set_ylabel(unit)
        ax.set_title(title)
        top = max([v for row, _, _ in rows for who in (LS, OURS)
                   for v in (get(row[who]), get2(row[who]) if get2 else None) if v] +
                  ([v for v in bare.values() if v] if ax is axes[1, 0] else []), default=1)
        ax.set_ylim(0, top * 1.15)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    _plot_steps(axes[0, 3], results)
    _plot_servers(axes[1, 3], results)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_steps(ax, results: dict) -> None:
    """Ours' decode step, stacked by part, at each level; the step interval as a marker."""
    rows = step_rows(results)
    ax.set_title("Ours: where a decode step goes (ms per step)")
    if not rows:
        ax.axis("off")
        return
    colors = dict(zip(PARTS, ("#8c8c8c", "#c7c7c7", "#d9730d", "#e8b04a", "#7a5195", "#4f9a4f", "#3b6ea5")))
    xs = range(len(rows))
    bottom = [0.0] * len(rows)
    for part in PARTS:
        vals = [b["ms_per_step"].get(part, 0.0) for _, b in rows]
        ax.bar(xs, vals, bottom=bottom, color=colors[part], width=0.6, label=PART_NAMES[part])
        bottom = [a + v for a, v in zip(bottom, vals)]
    ax.plot(xs, [b["step_interval_ms"] for _, b in rows], "k_", ms=30, mew=2,
            label="step interval (wall / steps)")
    for x, (_, b) in zip(xs, rows):
        ax.annotate(f"{b['step_interval_ms']:.2f}", (x, b["step_interval_ms"]), textcoords="offset points",
                    xytext=(0, 4), ha="center", fontsize=8)
    tg = single(results)["llama_bench_tg"]
    ax.axhline(1e3 / tg, color=COLORS["llama-bench"], ls="--", lw=1.2, label=f"llama-bench tg: {1e3 / tg:.2f} ms/token")
    ax.set_xticks(list(xs), [f"{n} stream{'s' * (n > 1)}" for n, _ in rows])
    ax.set_ylabel("ms")
    ax.legend(loc="upper left", fontsize=7)
    ax.margins(y=0.2)


def _plot_servers(ax, results: dict) -> None:
    ax.axis("off")
    first = next((r for r in results["concurrency"] if r.get("commands")), None)
    if not first:
        return
    text = ["Servers as started (at 1 stream):" if results["config"].get("mode") == "matched"
            else "Each server on its own defaults, started as:"]
    for who, cmd in first["commands"].items():
        slots = (first.get("slots") or {}).get(who)
        short = " ".join(Path(w).name if "/" in w else w for w in cmd.split())
        text.append(textwrap.fill(f"{who}: {short}" + (f"  ({slots} slots)" if slots else ""), 60,
                                  subsequent_indent="   "))
    ax.text(0.0, 1.0, "\n".join(text), fontsize=9, va="top", family="monospace", transform=ax.transAxes)
