"""Failover under steady load, through HAProxy: kill -9 of one node's service, then the power cut of
a whole node. The balancer stops routing to it within its check window, every request that starts
after that succeeds, and the streams that were on the dead node end (error event or closed
connection), none hangs."""
from __future__ import annotations

import time

import pool_helpers as h
import pytest
from pool_load import Load, report


# HAProxy needs `fall` failed checks `inter` apart (fastinter once the first one failed), and up to
# one interval passes before the first: (fall + 1) intervals, plus a second of slack for this box.
def window(pool) -> float:
    return (pool.c.fall + 1) * pool.c.check_inter_ms / 1000 + 1.0


def wait_busy(pool, node, timeout=20):
    """Until the node has a request in flight, so the failure hits running streams."""
    deadline = time.monotonic() + timeout
    while int(pool.stats()[pool.slot_of(node)]["scur"] or 0) < 1:
        assert time.monotonic() < deadline, f"{node} never had a request in flight"
        time.sleep(0.02)


@pytest.mark.timeout(1800)  # includes the session pool's first build (seed converge)
def test_failover_under_load(pool2, capsys):
    pool = pool2
    a, b = sorted(s["node"] for s in pool.state.slots.values())
    up = lambda s: s == "UP"  # noqa: E731
    load = Load(pool.url, cafile=pool.c.tls_cert, clients=3, max_requests=1000, duration=240, max_tokens=32).start()
    try:
        load.wait_for(6)

        # 1. kill -9 of node a's service: NGINX on a answers 502 (HAProxy retries those elsewhere)
        wait_busy(pool, a)
        t_kill = time.monotonic()
        h.kill_backend(pool, a)
        t_out = h.wait_status(pool, a, lambda s: s.startswith("DOWN"), timeout=30)
        load.wait_for(8)
        # systemd restarts the service, /readyz turns 200 once the model is loaded, HAProxy takes it back
        t_back = h.wait_status(pool, a, up, timeout=90)
        load.wait_for(6)

        # 2. power cut of the whole node b
        wait_busy(pool, b)
        t_cut = time.monotonic()
        h.power_off(pool, b)
        t_out2 = h.wait_status(pool, b, lambda s: s.startswith("DOWN"), timeout=30)
        load.wait_for(8)
    finally:
        results = load.stop()

    phases = {
        "before the kill -9": [r for r in results if r.start < t_kill],
        f"a: kill -9 -> out of the balancer ({t_out - t_kill:.1f} s)":
            [r for r in results if t_kill <= r.start < t_out],
        "a out -> a back (b serves alone)": [r for r in results if t_out <= r.start < t_back],
        "a back -> power cut of b": [r for r in results if t_back <= r.start < t_cut],
        f"b: power cut -> out of the balancer ({t_out2 - t_cut:.1f} s)":
            [r for r in results if t_cut <= r.start < t_out2],
        "b out (a serves alone)": [r for r in results if r.start >= t_out2],
    }
    on_dead_a = [r for r in results if r.served_by == a and r.start < t_kill < r.end]
    on_dead_b = [r for r in results if r.served_by == b and r.start < t_cut < r.end]
    phases["streams on a when its service died"] = on_dead_a
    phases["streams on b when it lost power"] = on_dead_b
    h.show(capsys, report("failover under load (3 clients, streams of 32 tokens)", phases))

    w = window(pool)
    assert t_out - t_kill <= w, f"HAProxy took {t_out - t_kill:.1f} s to drop {a} (window {w} s)"
    assert t_out2 - t_cut <= w, f"HAProxy took {t_out2 - t_cut:.1f} s to drop {b} (window {w} s)"
    # Once the balancer dropped a node, every request that starts succeeds (the streams that were
    # running on b when it lost power are judged below, with the other streams on dead nodes).
    for name in ("a out -> a back (b serves alone)", "a back -> power cut of b", "b out (a serves alone)"):
        bad = [r for r in phases[name] if not r.ok and r not in on_dead_b]
        assert phases[name] and not bad, f"{name}: {[(r.outcome, r.status, r.detail) for r in bad]}"
    assert not [r for r in phases["b out (a serves alone)"] if r.served_by != a]
    # Streams on a dying node end, quickly, and never hang.
    assert on_dead_a or on_dead_b, "no stream was running on a node when it failed"
    assert not [r for r in results if r.outcome == "hang"], "a stream hung"
    for r in on_dead_a + on_dead_b:
        assert r.outcome in ("ok", "closed", "error_event", "http_error"), r
        assert r.end - max(t_kill if r in on_dead_a else t_cut, r.start) < w + 2, \
            f"a stream on a dead node took {r.end - r.start:.1f} s to end"
