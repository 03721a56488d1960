"""The local pool's demand autoscaler (pool/autoscale.py) under a bounded burst through HAProxy:
an idle pool shrinks to 1 node; a few dozen clients make requests wait on that node and the pool
grows to 2; when the burst gives way to one client's long streams, the pool shrinks back to 1,
draining the leaving node while a stream runs on it. Every request is served or refused with 503 +
Retry-After (the clients then wait as it says), none is cut, and no request reaches the leaving
node after its drain.

The thresholds are the shared ones (playbooks/vars/demand.yml, the OCI policy's); the window and
cool-down are seconds here (OCI: 60 s and >= 300 s), so the test stays bounded. For the scale-in,
the test samples every half second as the controller does but lets it decide only at an instant
when the node it would remove has just been given a stream: so the scale-in always happens under
a running stream (the policy and the drain are the controller's own).
"""
from __future__ import annotations

import time

import autoscale
import pool_helpers as h
import pytest
from pool_load import Load, report

BURST_CLIENTS = 24   # against 1 node x (2 slots + 2 queued): most wait or are refused
LIGHT_TOKENS = 96    # one client's long streams after the burst: 1 of the 2 nodes' 4 slots busy
STORY = "Write a long story about a lighthouse keeper and a storm."  # runs to max_tokens
WINDOW, COOLDOWN = 5.0, 8.0


def wait_for(done, timeout: float, what: str, scaler) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout:.0f} s; events: {scaler.events}"
        time.sleep(0.25)


def actions(scaler, action: str) -> list[dict]:
    return [e for e in scaler.events if e["action"] == action]


@pytest.mark.timeout(420)
def test_pool_grows_on_waiting_requests_and_shrinks_without_cutting_a_stream(pool2, capsys):
    pool = pool2
    policy = autoscale.Policy.load(window=WINDOW, cooldown=COOLDOWN, min_nodes=1, max_nodes=2)
    scaler = autoscale.Autoscaler(pool, policy, poll=0.5, log=lambda m: None).start()
    burst = light = None
    try:
        # Idle: the pool's 2 nodes shrink to the minimum.
        wait_for(lambda: len(actions(scaler, "removed")) == 1, 60, "scale-in of the idle pool", scaler)
        t_burst = time.monotonic()
        # The pause keeps each client under the nodes' per-client rate limit (2 r/s, burst 10): only
        # the pool's capacity refuses anyone here.
        burst = Load(pool.url, cafile=pool.c.tls_cert, clients=BURST_CLIENTS, max_requests=3000, duration=150,
                     max_tokens=16, pause=0.6, honour_retry_after=True).start()
        wait_for(lambda: actions(scaler, "serving"), 90, "scale-out under the burst", scaler)
        grown = actions(scaler, "serving")[0]
        new_node = grown["node"]
        # The new node takes its share of the burst for a while.
        wait_for(lambda: sum(r.served_by == new_node and r.ok for r in burst.results) >= 10, 60,
                 f"10 streams served by {new_node}", scaler)
        scaler.stop()
        burst.stop(90)
        t_light = time.monotonic()
        light = Load(pool.url, cafile=pool.c.tls_cert, clients=1, max_requests=400, duration=120,
                     max_tokens=LIGHT_TOKENS, pause=0.1, prompts=(STORY,)).start()

        def fresh_stream_on_leaving_node() -> bool:
            row = pool.stats().get(scaler.leaving() or "", {})
            return int(row.get("scur") or 0) >= 1 and row.get("lastsess") == "0"

        deadline = time.monotonic() + 90
        while not actions(scaler, "removed")[1:]:
            assert time.monotonic() < deadline, f"no scale-in after the burst; events: {scaler.events}"
            scaler.sample()
            if fresh_stream_on_leaving_node():
                scaler.decide()
            time.sleep(0.5)
        t_shrunk = time.monotonic()
        light.wait_for(2)
    finally:
        for load in (burst, light):
            if load:
                load.stop(90)
        scaler.stop()

    results = burst.results + light.results
    drain, removed = actions(scaler, "drain")[1], actions(scaler, "removed")[1]
    leaving = drain["node"]
    statuses: dict[int, int] = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    finished_in_drain = [r for r in results if r.served_by == leaving and r.start < drain["t"] < r.end]
    boot = next((b for b in pool.boot_times() if b["node"] == new_node), {})
    h.show(capsys, report(
        f"autoscale 1 -> 2 -> 1 ({BURST_CLIENTS} clients, then 1; window {WINDOW:.0f} s, "
        f"cool-down {COOLDOWN:.0f} s, thresholds of playbooks/vars/demand.yml)",
        {"burst, 1 node (until the new node is UP)": [r for r in burst.results if r.start < grown["t"]],
         "burst, 2 nodes": [r for r in burst.results if r.start >= grown["t"]],
         "light load, through the scale-in": [r for r in light.results if r.start < t_shrunk],
         "light load, 1 node again": [r for r in light.results if r.start >= t_shrunk]})
        + f"\n  HTTP statuses {statuses}; 503s with Retry-After: "
        + f"{sum(1 for r in results if r.status == 503 and r.retry_after)}"
        + "\n" + "\n".join(f"  {e['t'] - t_burst:6.1f} s {e['action']:<9} {e['node'] or '':<24} "
                           f"saturation {e['saturation']:.2f} queue {e['queue']:.2f} -> {e['nodes']} node(s)"
                           + (f" open {e['open']}" if "open" in e else "")
                           + (f" open at removal {e['open_at_removal']}" if "open_at_removal" in e else "")
                           for e in scaler.events)
        + f"\n  light load from {t_light - t_burst:.1f} s; {len(finished_in_drain)} stream(s) on {leaving} "
          f"were running at its drain and finished ({[r.tokens for r in finished_in_drain]} tokens)"
        + f"\n  {new_node} boot-to-ready: container up {boot.get('booted_s')} s, /readyz 200 {boot.get('ready_s')} s, "
          f"first token {boot.get('first_token_s')} s after its start")

    # Requests waited: the pool grew on the queue, not on a guess; then shrank when slots idled.
    assert grown["queue"] > policy.scale_out_queue
    assert removed["saturation"] < policy.scale_in_saturation
    assert [e["action"] for e in scaler.events] == ["drain", "removed", "scale-out", "serving", "drain", "removed"]
    assert len(local_nodes := pool.state.slots) == 1, local_nodes
    # Served or refused with 503 + Retry-After, nothing else; accepted streams all finished.
    assert set(statuses) <= {200, 503}, statuses
    assert all(r.ok for r in results if r.status == 200), \
        [(r.outcome, r.served_by, r.detail) for r in results if r.status == 200 and not r.ok]
    assert all(r.retry_after and r.retry_after.isdigit() for r in results if r.status == 503)
    assert statuses.get(503, 0) > 0, "the burst never filled the node: nothing waited"
    # Both nodes served the burst; nothing reached the leaving node after its drain.
    assert any(r.served_by == new_node and r.ok for r in burst.results)
    late = [r for r in results if r.served_by == leaving and r.start > drain["t"] + 0.1]
    assert not late, f"{leaving} got {len(late)} request(s) after its drain"
    assert removed["open_at_removal"] == 0
    assert drain["open"] >= 1 and finished_in_drain, "the scale-in was meant to happen under a running stream"
    assert all(r.ok and r.tokens == LIGHT_TOKENS for r in finished_in_drain)
    # The light load was served throughout the scale-in.
    assert light.results and all(r.ok for r in light.results)
