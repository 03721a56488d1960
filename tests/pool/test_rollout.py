"""Rolling replacement to a new image under steady load, by the shared algorithm (rollout.py) with the
local provider: zero failed requests, every request answered by a node HAProxy had as healthy and not
drained, and each old node drained (nothing in flight) before it was stopped."""
from __future__ import annotations

import time

import local
import pool_helpers as h
import pytest
from pool_load import Load, report


class Recorder(local.LocalProvider):
    """The local provider, noting when each node was drained and what HAProxy said when it went."""

    def __init__(self, pool):
        super().__init__(pool)
        self.drained, self.removed = {}, {}

    def drain(self, node):
        super().drain(node)
        self.drained[node.id] = time.monotonic()

    def remove(self, node):
        st = self.pool.stats()[self.pool.slot_of(node.id)]
        self.removed[node.id] = {"t": time.monotonic(), "status": st["status"], "open": int(st["scur"] or 0)}
        super().remove(node)


@pytest.mark.timeout(900)
def test_rolling_replacement_under_load(pool2, capsys):
    pool = pool2
    old = {n.id for n in local.LocalProvider(pool).nodes()}
    # The new release: the seed converged again with a changed setting, then baked like the first.
    t0 = time.monotonic()
    pool.converge_seed({"backend_log_level": "warning"})
    image = pool.bake()
    t_bake = time.monotonic() - t0

    provider = Recorder(pool)
    load = Load(pool.url, cafile=pool.c.tls_cert, clients=3, max_requests=1500, duration=400, max_tokens=32).start()
    try:
        load.wait_for(6)
        t_roll = time.monotonic()
        events = local.Rollout(provider, health_timeout=120, drain_timeout=60, poll=0.25).run(
            local.plan(provider.nodes(), provider.healthy(), image, batch_size=1))
        t_done = time.monotonic()
        load.wait_for(6)
    finally:
        results = load.stop()

    new = {n.id for n in provider.nodes()}
    h.show(capsys, report(
        f"rolling replacement {sorted(old)} -> {sorted(new)} on {image} "
        f"(bake {t_bake:.0f} s, roll {t_done - t_roll:.0f} s; 3 clients)",
        {"before the roll-out": [r for r in results if r.start < t_roll],
         "during the roll-out": [r for r in results if t_roll <= r.start < t_done],
         "after": [r for r in results if r.start >= t_done]})
        + "\n" + "\n".join(f"  {e['t'] - t_roll:6.1f} s {e['action']} {e['node'] or e.get('nodes', '')}"
                           for e in events)
        + "\n" + "\n".join(f"  {n}: drained {provider.removed[n]['t'] - provider.drained[n]:.1f} s before "
                           f"it was stopped; HAProxy then: {provider.removed[n]}" for n in sorted(old)))

    failed = [(r.outcome, r.status, r.served_by, r.detail) for r in results if not r.ok]
    assert not failed, f"requests failed during the roll-out: {failed}"
    assert new.isdisjoint(old) and len(new) == len(old)
    assert all(n.image == image for n in provider.nodes())
    assert provider.healthy() == new
    # Every answer came from a node of the pool; none from an old node after it was drained.
    assert {r.served_by for r in results} <= old | new
    for n, t in provider.drained.items():
        late = [r for r in results if r.served_by == n and r.start > t + 0.1]
        assert not late, f"{n} got {len(late)} request(s) after it was drained"
    # Drained first, empty when stopped.
    for n in old:
        assert n in provider.drained and provider.drained[n] < provider.removed[n]["t"]
        assert provider.removed[n]["status"] == "DRAIN" and provider.removed[n]["open"] == 0
    # The new nodes run the new release.
    for n in new:
        assert 'log_level = "warning"' in pool.exec_in(n, "cat", "/etc/ampere-llm/server.toml").stdout
