"""`make bench` (its --pool part): aggregate tokens/s through the local pool's balancer (pool/local.py:
HAProxy in front of nodes booted from the seed's image) with 1 and then 2 nodes, and what a million
tokens would cost on OCI at those speeds. Then the demand autoscaler (pool/autoscale.py): one fixed,
bounded ramp of clients (RAMP) through HAProxy, once on a pool held at 1 node and once with the
demand policy (1..2 nodes), counting requests served, refused (503), and served after waiting more
than 2 s for their first token, and node-minutes used; and each node's boot-to-ready time
(container start -> /readyz 200 -> first token), which pool/local.py logs as nodes come up.

Each node runs its service with 1 thread (pool/seed-vars.yml), so 2 nodes split this 2-core box.
The same offered load at both sizes: STREAMS requests at once, rounds of them, streamed to the end.
Prices (OCI list prices, the reference architecture's figures): Ampere A2 $0.01 per OCPU-hour, 1 OCPU = 2 cores;
a small public load balancer about $0.029 per hour.
"""
from __future__ import annotations

import asyncio
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "pool"))
sys.path.insert(0, str(HERE.parent / "tests/pool"))  # the pool tests' load clients, one of them in the tree

import autoscale
import local
from harness import OursServer, counting_prompts, median, run_round
from pool_load import Load

A2_PER_OCPU_HOUR = 0.01
CORES_PER_OCPU = 2
LB_PER_HOUR = 0.029
STREAMS = 4
# The demand ramp: (clients at once, seconds), each client one 16-token stream at a time with a
# pause that keeps it under the nodes' per-client rate limit, and after a 503 the wait its
# Retry-After asks for. The same ramp with and without the policy.
RAMP = ((2, 15), (8, 20), (24, 30), (8, 15), (2, 10))
RAMP_TOKENS = 16
WAIT_S = 2.0
# Local window and cool-down (seconds; OCI: 60 s and >= 300 s); thresholds from playbooks/vars/demand.yml.
WINDOW, COOLDOWN = 5.0, 10.0
# Each node's service runs 1 thread: beyond 2 nodes they would share this box's 2 cores, and a
# third node would slow the others instead of adding capacity.
MAX_NODES = 2
# Its own ports, so it runs beside `make demo` and `make test` pools.
CONFIG = local.Config(name="bench", port=18390, seed_ssh=22060, seed_backend=18300, seed_web=18380)


class Balancer(OursServer):
    """The pool's front door spoken to as one of our servers (same /generate stream, same counting)."""
    label = "pool"

    def __init__(self, url: str):  # no process of its own: HAProxy and the nodes are the pool's
        self.url = url


def cost_per_million(tps: float, cores: int, with_lb: bool = True) -> float:
    per_hour = cores / CORES_PER_OCPU * A2_PER_OCPU_HOUR + (LB_PER_HOUR if with_lb else 0.0)
    return per_hour / (tps * 3600) * 1e6


async def measure(url: str, rounds: int, max_tokens: int) -> dict:
    front = Balancer(url)
    prompts = counting_prompts(STREAMS * rounds, 32, 3.0, seed=11)
    per_round = []
    for i in range(rounds):
        samples, wall = await run_round(front, prompts[i * STREAMS:(i + 1) * STREAMS], max_tokens)
        per_round.append(sum(s.tokens for s in samples) / wall)
    return {"aggregate_tps": median(per_round), "rounds_tps": per_round}


def ramp(pool: local.LocalPool, scaler: autoscale.Autoscaler | None, settle: float = 60) -> dict:
    """RAMP through HAProxy; node-seconds are counted from its start until the pool is back at its
    minimum (with the policy) or the ramp ends (without), every node counted from its launch to its
    removal, booting and draining included, as OCI bills."""
    stop = threading.Event()
    node_seconds = [0.0]

    def count_nodes():
        t = time.monotonic()
        while not stop.wait(0.5):
            now = time.monotonic()
            node_seconds[0] += len(pool.state.slots) * (now - t)
            t = now

    counter = threading.Thread(target=count_nodes, daemon=True)
    t0 = time.monotonic()
    counter.start()
    if scaler:
        scaler.start()
    results = []
    try:
        for clients, seconds in RAMP:
            results += Load(pool.url, clients=clients, max_requests=100000, duration=seconds,
                            max_tokens=RAMP_TOKENS, pause=0.6, honour_retry_after=True).start().stop(120, wait=True)
        t_ramp = time.monotonic() - t0
        deadline = time.monotonic() + settle
        while scaler and len(pool.state.slots) > scaler.policy.min_nodes and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        if scaler:
            scaler.stop()
        stop.set()
        counter.join()
    served = [r for r in results if r.ok]
    return {"requests": len(results), "served": len(served),
            "refused_503": sum(r.status == 503 for r in results),
            "other_failures": sum(not r.ok and r.status != 503 for r in results),
            "waited_over_2s": sum(r.first_token - r.start > WAIT_S for r in served),
            # Refused (told to come back later) or served late: no first token within 2 s.
            "not_answered_in_2s": len(results) - sum(r.first_token - r.start <= WAIT_S for r in served),
            "ttft_p50_s": median([r.first_token - r.start for r in served]) if served else None,
            "ttft_max_s": max((r.first_token - r.start for r in served), default=None),
            "ramp_s": round(t_ramp, 1), "counted_s": round(time.monotonic() - t0, 1),
            "node_minutes": round(node_seconds[0] / 60, 2),
            "events": [{k: v for k, v in e.items() if k != "t"} | {"at_s": round(e["t"] - t0, 1)}
                       for e in (scaler.events if scaler else [])]}


def demand(pool: local.LocalPool, say=print) -> dict:
    """The ramp without the demand policy (1 node throughout) and with it (1..MAX_NODES nodes)."""
    provider = local.LocalProvider(pool)
    while len(pool.state.slots) > 1:  # both runs start from one node
        pool.remove_node(provider.nodes()[-1].id)
    policy = autoscale.Policy.load(window=WINDOW, cooldown=COOLDOWN, min_nodes=1, max_nodes=MAX_NODES)
    out = {"ramp": [list(x) for x in RAMP], "max_tokens": RAMP_TOKENS, "policy": asdict(policy)}
    for label, scaler in (("fixed, 1 node", None),
                          (f"demand policy, 1..{MAX_NODES} nodes", autoscale.Autoscaler(pool, policy, poll=0.5,
                                                                             log=lambda m: None))):
        m = ramp(pool, scaler)
        out[label] = m
        say(f"==> demand ramp, {label}: {m['requests']} requests, {m['served']} served, "
            f"{m['refused_503']} refused (503), {m['waited_over_2s']} waited > {WAIT_S:.0f} s for a first token "
            f"({m['not_answered_in_2s']} with no first token within {WAIT_S:.0f} s), "
            f"{m['node_minutes']:.2f} node-minutes over {m['counted_s']:.0f} s")
        for e in m["events"]:
            say(f"    {e['at_s']:6.1f} s {e['action']} {e['node'] or ''} (saturation {e['saturation']}, "
                f"queue {e['queue']})")
    return out


def run(quick: bool = False, say=print) -> dict:
    rounds, max_tokens = (2, 32) if quick else (4, 96)
    pool = local.LocalPool(CONFIG)
    pool.down()  # whatever an interrupted run left
    pool = local.LocalPool(CONFIG)
    out = {"streams": STREAMS, "max_tokens": max_tokens, "rounds": rounds, "sizes": []}
    try:
        t0 = time.monotonic()
        pool.up(1)
        say(f"==> pool: seed, image and 1 node up in {time.monotonic() - t0:.0f} s")
        for size in (1, 2):
            if size == 2:
                pool.add_node(pool.state.image)
                pool.wait_healthy(2)
            m = asyncio.run(measure(pool.url, rounds, max_tokens))
            m["nodes"], m["cores"] = size, size  # one thread = one core per node here
            out["sizes"].append(m)
            say(f"==> pool with {size} node(s): {m['aggregate_tps']:.1f} tok/s through HAProxy "
                f"({STREAMS} streams at once, rounds {', '.join(f'{x:.1f}' for x in m['rounds_tps'])})")
        out["demand"] = demand(pool, say)
        pool.wait_boot_times()
        out["boot"] = pool.boot_times()
        say("==> boot-to-ready of each node (container start -> /readyz 200 -> first token, read at the node):\n"
            + "\n".join(f"    {b['node']}: up {b['booted_s']} s, ready {b['ready_s']} s, "
                         f"first token {b['first_token_s']} s" for b in out["boot"]))
    finally:
        pool.down()
    per_core = out["sizes"][0]["aggregate_tps"]
    out["cost"] = [
        {"what": f"{m['nodes']} node(s) x 1 core, measured here", "tps": m["aggregate_tps"],
         "usd_per_mtok": cost_per_million(m["aggregate_tps"], m["cores"]),
         "usd_per_mtok_nodes_only": cost_per_million(m["aggregate_tps"], m["cores"], with_lb=False),
         "estimate": False} for m in out["sizes"]]
    # ESTIMATE: a 4-core A2 node (2 OCPU) if it did 4x this box's 1-core figure. Decode is bound by
    # memory bandwidth more than by cores, and A2 cores are not these x86 cores: an upper bound.
    est = per_core * 4
    out["cost"].append({"what": "ESTIMATE: 1 A2 node x 4 cores (2 OCPU), 4x the 1-core figure", "tps": est,
                        "usd_per_mtok": cost_per_million(est, 4),
                        "usd_per_mtok_nodes_only": cost_per_million(est, 4, with_lb=False), "estimate": True})
    lines = ["==> cost per million tokens (A2 $0.01/OCPU-hour, 2 cores per OCPU; LB $0.029/hour)",
             f"    {'pool':<62} {'tok/s':>7} {'$/Mtok':>8} {'nodes only':>11}"]
    for c in out["cost"]:
        lines.append(f"    {c['what']:<62} {c['tps']:>7.1f} {c['usd_per_mtok']:>8.3f} "
                     f"{c['usd_per_mtok_nodes_only']:>11.3f}")
    say("\n".join(lines))
    return out
