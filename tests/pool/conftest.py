"""The local pool for tests/pool: one seed converged by site.yml, one image, two nodes behind HAProxy,
built once per session (pool/local.py) and torn down at the end whatever happened.

Its ports are its own (seed SSH 22050, seed service 18200, seed page 18280, balancer 18290), so a
`make demo` pool (22040/18000/18080 and 80 or 8080) and molecule (22041/18100/18180) run beside it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "pool"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import local  # noqa: E402  pool/local.py

CONFIG = local.Config(name="test", port=18290, seed_ssh=22050, seed_backend=18200, seed_web=18280,
                      slots=4, check_inter_ms=1000, fall=2, rise=2)
NODES = 2


def leftovers(pool: local.LocalPool) -> list[str]:
    """Anything of this pool still running or mounted after teardown."""
    found = []
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    found += [l.strip() for l in ps.splitlines() if pool.prefix in l or str(pool.dir) in l]
    if Path("/run/netns").exists():
        found += [f"netns {p.name}" for p in Path("/run/netns").glob(f"{pool.prefix}-*")]
    found += [l for l in Path("/proc/mounts").read_text().splitlines() if pool.prefix in l]
    return found


@pytest.fixture(scope="session")
def pool():
    local.LocalPool.preflight()  # haproxy, nspawn, ...: "make deps" when missing
    stale = local.LocalPool(CONFIG)
    stale.down()  # whatever a killed earlier run left
    p = local.LocalPool(CONFIG)
    t0 = time.monotonic()
    try:
        p.up(NODES)
        print(f"\npool up in {time.monotonic() - t0:.0f} s (seed converge, image, {NODES} nodes):\n{p.status()}")
        yield p
    finally:
        t1 = time.monotonic()
        p.down()
        left = leftovers(p)
        print(f"pool down in {time.monotonic() - t1:.0f} s; left behind: {left or 'nothing'}")
        assert not left, f"the pool's teardown left these behind: {left}"


@pytest.fixture
def pool2(pool):
    """The session pool with exactly NODES healthy nodes (a failover test leaves a dead one)."""
    provider = local.LocalProvider(pool)
    for node in provider.nodes():
        if node.id not in provider.healthy():
            pool.remove_node(node.id)
    while len(pool.state.slots) < NODES:
        pool.add_node(pool.state.image)
    pool.wait_healthy(NODES, timeout=120)
    return pool
