"""Overload beyond the pool's slots and queues, through HAProxy: the nodes answer 503 with
Retry-After instead of piling up, nothing crashes or restarts, memory stays steady."""
from __future__ import annotations

import pool_helpers as h
import pytest
from pool_load import Load, report

ROUNDS = 3
CLIENTS = 24     # at once, against 2 nodes x (2 slots + 2 queued) = 8 requests the pool holds
PER_ROUND = 72


@pytest.mark.timeout(600)
def test_overload_answers_503_and_stays_up(pool2, capsys):
    pool = pool2
    nodes = sorted(s["node"] for s in pool.state.slots.values())
    before = {n: h.service(pool, n) for n in nodes}
    memory = [(sum(before[n]["rss_mib"] for n in nodes), h.haproxy_rss_mib(pool))]
    phases = {}
    for i in range(1, ROUNDS + 1):
        rs = Load(pool.url, cafile=pool.c.tls_cert, clients=CLIENTS, max_requests=PER_ROUND, duration=120,
                  max_tokens=48).start().stop(180, wait=True)
        phases[f"round {i}: {CLIENTS} clients at once"] = rs
        now = {n: h.service(pool, n) for n in nodes}
        memory.append((sum(now[n]["rss_mib"] for n in nodes), h.haproxy_rss_mib(pool)))
    after = {n: h.service(pool, n) for n in nodes}
    statuses = {}
    for rs in phases.values():
        for r in rs:
            statuses[r.status] = statuses.get(r.status, 0) + 1
    h.show(capsys, report(f"overload ({PER_ROUND} requests per round, 48 tokens each)", phases)
           + f"\n  HTTP statuses: {statuses}"
           + "\n  memory after each round (services' RSS sum, HAProxy RSS, MiB): "
           + ", ".join(f"{s:.0f}/{p:.1f}" for s, p in memory))

    everything = [r for rs in phases.values() for r in rs]
    assert set(statuses) <= {200, 503}, f"only answers and 503s expected: {statuses}"
    assert statuses.get(503, 0) > 0 and statuses.get(200, 0) >= 8, statuses
    refused = [r for r in everything if r.status == 503]
    assert all(r.retry_after and r.retry_after.isdigit() for r in refused), "503 without Retry-After"
    assert all(r.ok for r in everything if r.status == 200), "an accepted stream did not finish"
    # No crash: same processes, no restarts, both nodes still in the balancer.
    assert {n: (s["pid"], s["restarts"]) for n, s in after.items()} == \
        {n: (s["pid"], s["restarts"]) for n, s in before.items()}
    assert all(h.status(pool, n) == "UP" for n in nodes)
    # Memory steady: after the first round (warm caches) it grows by less than 5% over the others.
    (s1, p1), (sn, pn) = memory[1], memory[-1]
    assert sn < s1 * 1.05 + 16, f"services' memory grew {s1:.0f} -> {sn:.0f} MiB"
    assert pn < p1 * 1.2 + 4, f"HAProxy's memory grew {p1:.1f} -> {pn:.1f} MiB"
