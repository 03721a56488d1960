"""`bench/run.py --sweep`: which of ours' own settings is fastest on this node, measured.

Only ours (ampere-llm-server) runs, once per setting of a small grid over the knobs its command
line exposes: `--threads` (1, powers of two, and the usable cores) times `--flash-attn` (on,
off). The setting equal to the service's defaults is started with no knob flags at all, as a user
gets it. All of them start first (an idle one waits on its socket and costs no CPU); then, in each
round, every setting in turn serves one streamed request alone (decode tokens/s and time to first
token) and then `streams` at once (aggregate tokens/s). The order rotates from round to round, so
no setting always runs first or after the same neighbour. Each setting is compared with the
defaults as the median of per-round paired ratios (its round over the defaults' round of the same
round) with their spread, as `make bench` compares ours with llama-server (report.paired_ratios).
A round that would end past the time budget is not started (at least 2 rounds run), so a full
sweep stays within ~10 minutes on a 2-core box.

The prefill chunk (--prefill-chunk: prompt tokens read per step while other streams generate)
is swept at the usable cores with flash attention on: half and twice the default. The 4 streams
of a round arrive together, so all but the first are read beside a running stream, where the
chunk decides how many steps (each with its own pass over the running streams) a prompt takes.
--batch (llama.cpp's n_batch = n_ubatch) is not: the bench's prompts fit far below it.

Writes <out>/<stamp>-<model>-sweep.{json,md,png} and prints the fastest setting per measure beside
the defaults.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import harness
import report
from harness import OursServer, median

FULL = {"prompt_tokens": 128, "max_tokens": 128, "rounds": 5, "streams": 4, "budget_s": 480}
QUICK = {"prompt_tokens": 32, "max_tokens": 16, "rounds": 2, "streams": 4, "budget_s": 60}
MIN_ROUNDS = 2
# measure: (what, higher is better)
MEASURES = {"decode": ("single-stream decode tok/s", True), "ttft": ("single-stream TTFT ms", False),
            "aggregate": ("aggregate tok/s", True)}


@dataclass(frozen=True)
class Setting:
    threads: int
    flash_attn: str
    prefill_chunk: int | None = None      # None: the service's default

    @property
    def name(self) -> str:
        chunk = f", prefill chunk {self.prefill_chunk}" if self.prefill_chunk else ""
        return f"threads {self.threads}, flash-attn {self.flash_attn}{chunk}"

    @property
    def slug(self) -> str:
        chunk = f"-pc{self.prefill_chunk}" if self.prefill_chunk else ""
        return f"t{self.threads}-fa-{self.flash_attn}{chunk}"


def service_defaults() -> dict:
    """The service's own defaults, read from its code (cli.Config), not copied here."""
    from ampere_llm_server.cli import Config, default_threads

    return {"threads": default_threads(), "flash_attn": Config.flash_attn, "parallel": Config.parallel,
            "ctx": Config.ctx, "n_batch": Config.batch, "prefill_chunk": Config.prefill_chunk}


def thread_counts(cores: int) -> list[int]:
    """1, the powers of two below `cores`, and `cores`: every count on a small node, a handful on
    a large one (the sweep's time grows with the grid)."""
    counts, t = {cores}, 1
    while t < cores:
        counts.add(t)
        t *= 2
    return sorted(counts)


def grid(cores: int, prefill_chunk: int) -> list[Setting]:
    return ([Setting(t, fa) for t in thread_counts(cores) for fa in ("on", "off")]
            + [Setting(cores, "on", c) for c in (prefill_chunk // 2, prefill_chunk * 2)])


class SweepServer(OursServer):
    """Ours started with one setting's flags: only those that differ from the service's defaults."""

    def __init__(self, setting: Setting, defaults: dict, model: Path, log_dir: Path):
        self.setting, self.defaults = setting, defaults
        self.label = f"ours-{setting.slug}"
        super().__init__(model, setting.threads, log_dir)

    @property
    def is_default(self) -> bool:
        return ((self.setting.threads, self.setting.flash_attn) == (self.defaults["threads"],
                                                                     self.defaults["flash_attn"])
                and self.setting.prefill_chunk is None)

    def command(self) -> list[str]:
        exe = Path(sys.executable).parent / "ampere-llm-server"
        cmd = [str(exe), "--model", str(self.model), "--host", "127.0.0.1", "--port", str(self.port)]
        if self.setting.threads != self.defaults["threads"]:
            cmd += ["--threads", str(self.setting.threads)]
        if self.setting.flash_attn != self.defaults["flash_attn"]:
            cmd += ["--flash-attn", self.setting.flash_attn]
        if self.setting.prefill_chunk is not None:
            cmd += ["--prefill-chunk", str(self.setting.prefill_chunk)]
        return cmd


def rotated(items: list, r: int) -> list:
    k = r % len(items)
    return items[k:] + items[:k]


def per_round(rounds: list[dict], measure: str) -> list:
    if measure == "aggregate":
        return [sum(s["tokens"] for s in r["multi"]["samples"]) / r["multi"]["wall_s"] for r in rounds]
    key = {"decode": "decode_tps", "ttft": "ttft_ms"}[measure]
    return [r["single"][key] for r in rounds]


def analyse(settings: list[dict]) -> dict:
    """Each setting's medians and its paired ratios to the defaults; the fastest per measure."""
    base = next(s for s in settings if s["default"])
    for s in settings:
        s["median"] = {m: median(per_round(s["rounds"], m)) for m in MEASURES}
        s["vs_default"] = {m: report.spread(report.paired_ratios(per_round(s["rounds"], m),
                                                                 per_round(base["rounds"], m)))
                           for m in MEASURES}
    fastest = {}
    for m, (_, higher) in MEASURES.items():
        pick = max if higher else min
        best = pick(settings, key=lambda s: s["vs_default"][m]["median"] if s["vs_default"][m] else
                    (0 if higher else float("inf")))
        sp = best["vs_default"][m]
        clear = bool(sp) and (sp["lo"] > 1.0 if higher else sp["hi"] < 1.0)
        fastest[m] = {"setting": best["name"], "default": best["default"], "median": best["median"][m],
                      "default_median": base["median"][m], "vs_default": sp, "clear": clear}
    return fastest


async def measure(servers: list[SweepServer], cfg: dict, prompts, say) -> tuple[dict, int]:
    rounds: dict[str, list] = {s.label: [] for s in servers}
    for s in servers:                    # page the model in, fill caches: not measured
        await harness.run_round(s, prompts(cfg["streams"]), min(8, cfg["max_tokens"]))
    t0, done = time.monotonic(), 0
    for r in range(cfg["rounds"]):
        t_round = time.monotonic()
        single, multi = prompts(1), prompts(cfg["streams"])   # the same prompts for every setting
        for s in rotated(servers, r):
            (one,), wall1 = await harness.run_round(s, single, cfg["max_tokens"])
            many, wall = await harness.run_round(s, multi, cfg["max_tokens"])
            rounds[s.label].append({"single": dict(vars(one), decode_tps=one.decode_tps, wall_s=wall1),
                                    "multi": {"wall_s": wall, "samples": [dict(vars(x), decode_tps=x.decode_tps)
                                                                          for x in many]}})
            say(f"    round {r + 1}/{cfg['rounds']} {s.setting.name:<27}: decode {one.decode_tps or 0:7.1f} tok/s, "
                f"TTFT {one.ttft_ms:7.1f} ms, aggregate at {cfg['streams']} "
                f"{sum(x.tokens for x in many) / wall:7.1f} tok/s")
        done = r + 1
        spent, last = time.monotonic() - t0, time.monotonic() - t_round
        if done >= MIN_ROUNDS and done < cfg["rounds"] and spent + last > cfg["budget_s"]:
            say(f"    stopping after {done} rounds: another would end past the {cfg['budget_s']} s budget")
            break
    return rounds, done


async def main_async(args, model: Path, versions: dict, say) -> Path:
    cfg = dict(QUICK if args.quick else FULL)
    if args.rounds:
        cfg["rounds"] = max(MIN_ROUNDS, args.rounds)
    m = harness.machine()
    defaults = service_defaults()
    settings = grid(m["usable_cores"], defaults["prefill_chunk"])
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out).resolve()
    stem, logs = out / f"{stamp}-{model.stem}-sweep", out / f"{stamp}-sweep-logs"
    t_start, cpu_start = time.monotonic(), harness.cpu_seconds()
    say(f"==> sweep: ours alone on {model.name}, {len(settings)} settings ("
        + "; ".join(s.name for s in settings) + f"), up to {cfg['rounds']} rounds of 1 stream then "
        f"{cfg['streams']} streams, prompt ~{cfg['prompt_tokens']} tokens, {cfg['max_tokens']} generated; "
        f"the service's defaults: threads {defaults['threads']}, flash-attn {defaults['flash_attn']}, "
        f"prefill chunk {defaults['prefill_chunk']} (--batch {defaults['n_batch']}: not swept)")
    if report.busy(m["loadavg_start"][0], m["usable_cores"]):
        say(f"    warning: load average {m['loadavg_start'][0]:.1f} on {m['usable_cores']} cores: other work "
            f"is running; settings with more threads suffer most from it")

    servers: list[SweepServer] = []
    try:
        for s in settings:
            servers.append(await SweepServer(s, defaults, model, logs).start())
        tpn = await harness.tokens_per_number(servers[0])
        fresh = iter(harness.counting_prompts(4000, cfg["prompt_tokens"], tpn))
        rounds, done = await measure(servers, cfg, lambda n: [next(fresh) for _ in range(n)], say)
    finally:
        for s in servers:
            s.stop()

    results = {"schema": 1, "kind": "sweep", "started": stamp, "machine": m, "versions": versions,
               "config": {**cfg, "model": model.name, "model_path": str(model), "quick": args.quick,
                          "rounds_done": done, "sampling": harness.GREEDY, "defaults": defaults,
                          "not_swept": {"n_batch": "the bench's prompts fit far below it",
                                        "parallel": f"slots, not speed: {defaults['parallel']} "
                                                    f"(as llama-server's); the sweep's "
                                                    f"{cfg['streams']} streams fit them"}},
               "settings": [{"name": s.setting.name, **asdict(s.setting), "default": s.is_default,
                             "command": " ".join(s.command()), "slots": s.slots, "rounds": rounds[s.label]}
                            for s in servers]}
    results["fastest"] = analyse(results["settings"])
    m["loadavg_end"] = os.getloadavg()
    results["duration_s"] = round(time.monotonic() - t_start, 1)
    (host0, own0), (host1, own1) = cpu_start, harness.cpu_seconds()
    m["other_cpu_share"] = round(max(0.0, (host1 - host0) - (own1 - own0))
                                 / (results["duration_s"] * (os.cpu_count() or 1)), 3)
    files = {k: stem.parent / f"{stem.name}.{k}" for k in ("json", "md", "png")}
    results["files"] = {**{k: str(v) for k, v in files.items()}, "logs": str(logs)}
    out.mkdir(parents=True, exist_ok=True)
    plot(results, files["png"])
    files["md"].write_text(markdown(results))
    files["json"].write_text(json.dumps(results, indent=1))
    say(console(results))
    return stem


def _vs(sp: dict | None) -> str:
    return "—" if not sp else f"{sp['median']:.3f} ({sp['lo']:.3f}-{sp['hi']:.3f})"


def verdict(m: str, f: dict) -> str:
    what, higher = MEASURES[m]
    if f["default"]:
        return f"{what}: the defaults are fastest ({report._fmt(f['median'])})"
    sp = f["vs_default"]
    if not sp:
        return f"{what}: not measured"
    how = ("clearly (every paired round agrees)" if len(sp["pairs"]) < 5 else "clearly (the interquartile "
           "range of the paired rounds agrees)") if f["clear"] else report.WITHIN_SPREAD
    return (f"{what}: {f['setting']} {report._fmt(f['median'])} vs the defaults' "
            f"{report._fmt(f['default_median'])}: {sp['median']:.3f}x the defaults, paired rounds "
            f"{report.spread_text(sp)}, {how}")


def markdown(results: dict) -> str:
    c, m, v, d = results["config"], results["machine"], results["versions"], results["config"]["defaults"]
    streams = c["streams"]
    lines = [f"# Sweep {results['started']}: {c['model']}, ours' own settings", "",
             f"{m['cpu']}, {m['usable_cores']}/{m['cores']} cores usable, {m['mem_gib']} GiB; llama-cpp-python "
             f"{v.get('llama_cpp_python')}; ampere-llm-server {v.get('ampere_llm_server')}; load average "
             f"{m['loadavg_start'][0]:.1f} at start; other processes' CPU share during the run "
             f"{m.get('other_cpu_share', 0):.0%}; {results['duration_s']} s.", "",
             f"Only ours runs, one server per setting. In each of {c['rounds_done']} rounds every setting in "
             f"turn (the order rotating) serves one streamed request alone, then {streams} at once; prompts of "
             f"~{c['prompt_tokens']} tokens, {c['max_tokens']} generated, greedy. Figures are medians over the "
             f"rounds; \"vs defaults\" is the median of per-round paired ratios to the setting started with no "
             f"knob flags (the service's defaults: threads {d['threads']}, flash-attn {d['flash_attn']}, "
             f"parallel {d['parallel']}), with their spread (min-max; interquartile range from 5 rounds).", ""]
    if note := report._noisy(results):
        lines += [f"> Note: {note}.", ""]
    lines += [f"| setting | decode tok/s | vs defaults | TTFT median ms | vs defaults | aggregate at {streams} "
              f"streams tok/s | vs defaults |", "|---|---|---|---|---|---|---|"]
    for s in results["settings"]:
        vd = s["vs_default"]
        lines.append(f"| {s['name']}{' (defaults)' if s['default'] else ''} | {report._fmt(s['median']['decode'])} | "
                     f"{_vs(vd['decode'])} | {report._fmt(s['median']['ttft'])} | {_vs(vd['ttft'])} | "
                     f"{report._fmt(s['median']['aggregate'])} | {_vs(vd['aggregate'])} |")
    lines += ["", "## Fastest per measure", ""]
    lines += [f"- {verdict(k, f)}" for k, f in results["fastest"].items()]
    lines += ["", "## Not swept", "",
              f"- --batch, llama.cpp's n_batch / n_ubatch ({d['n_batch']}): the bench's prompts fit far "
              f"below it.",
              f"- --parallel ({d['parallel']}): the number of slots, a capacity choice; the sweep's {streams} "
              f"streams fit them.", "",
              "Commands:", ""]
    lines += [f"- `{s['command']}`" for s in results["settings"]]
    return "\n".join(lines) + "\n"


def console(results: dict) -> str:
    out = ["", f"==> sweep over {results['config']['rounds_done']} rounds (medians; vs the defaults: median of "
               f"paired rounds and their spread)"]
    w = max(len(s["name"]) for s in results["settings"]) + len(" (defaults)")
    for s in results["settings"]:
        vd = s["vs_default"]
        name = s["name"] + (" (defaults)" if s["default"] else "")
        out.append(f"  {name:<{w}}  decode {report._fmt(s['median']['decode']):>6} tok/s {_vs(vd['decode']):<22} "
                   f"TTFT {report._fmt(s['median']['ttft']):>6} ms {_vs(vd['ttft']):<22} "
                   f"aggregate {report._fmt(s['median']['aggregate']):>6} tok/s {_vs(vd['aggregate'])}")
    out += [f"  fastest: {verdict(k, f)}" for k, f in results["fastest"].items()]
    if note := report._noisy(results):
        out.append(f"  note: {note}")
    out.append(f"==> wrote {results['files']['md']}, .json and .png ({results['duration_s']} s)")
    return "\n".join(out)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, settings = results["config"], results["settings"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.5))
    fig.suptitle(f"ours' settings · {c['model']} · {results['machine']['cpu']} · {c['rounds_done']} rounds · "
                 f"prompt ~{c['prompt_tokens']} tok, {c['max_tokens']} generated · {results['started']}", fontsize=10)
    labels = [s["name"].replace(", ", "\n") + ("\n(defaults)" if s["default"] else "") for s in settings]
    colors = [report.COLORS[report.OURS] if s["default"] else "#e8b04a" for s in settings]
    for ax, (m, (what, higher)) in zip(axes, MEASURES.items()):
        xs = range(len(settings))
        b = ax.bar(xs, [s["median"][m] or 0 for s in settings], color=colors, width=0.6)
        ax.bar_label(b, labels=[report._fmt(s["median"][m]) for s in settings], padding=2, fontsize=8)
        for x, s in zip(xs, settings):            # every round, so the spread shows
            vals = [v for v in per_round(s["rounds"], m) if v is not None]
            ax.plot([x] * len(vals), vals, "k.", alpha=0.5, ms=5)
        ax.set_xticks(list(xs), labels, fontsize=8)
        title = f"aggregate at {c['streams']} streams tok/s" if m == "aggregate" else what
        ax.set_title(f"{title} ({'higher' if higher else 'lower'} is better)", fontsize=10)
        ax.margins(y=0.2)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
