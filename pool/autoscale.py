"""The local pool's demand autoscaler: the twin of the OCI pool's CUSTOM_QUERY autoscaling policy.

Every `poll` seconds it reads each serving node's /metrics at the node's own address (inside its
network namespace, not through HAProxy) and takes the two numbers OCI's nodes post to OCI
Monitoring (roles/monitoring), as the mean over the serving nodes:

    saturation = ampere_llm_slots_busy / ampere_llm_slots_total   (0..1: the share of slots decoding)
    queue      = ampere_llm_queue_depth                           (requests waiting for a slot)

The statistic is the mean of the samples of the last `window` seconds (OCI: `[1m].mean()` over the
pool's nodes; playbooks/vars/oci.yml writes the same two comparisons as OCI's MQL queries). Mean
queue above `scale_out_queue`: the pool grows by one node; else mean saturation below
`scale_in_saturation`: it shrinks by one; always within min..max nodes. After
either action nothing happens for `cooldown` seconds, nor before a whole window of samples of the
new size.

The thresholds live in one file both twins read: playbooks/vars/demand.yml. OCI refuses cool-downs
under 300 s and its metrics come per minute; a local test is bounded to a minute or two, so the
local window and cool-down are seconds, given on the command line (`local.py autoscale --window 10
--cooldown 20`) or by the caller.

Growing and shrinking go through the roll-out's provider (local.LocalProvider, rollout.Provider):
grow boots a node from the pool's current image and waits for HAProxy to see it UP; scale-in takes
the newest serving node, drains it at HAProxy (no new requests; its streams run on), waits until
HAProxy counts no open request on it (at most `drain_timeout`), then removes it: maintenance at
HAProxy, then the container stops, whose service drains as on SIGTERM (/readyz 503, new work
refused, streams finish), as a node does when OCI terminates it after the pool's pre-termination
drain. The node's own drain must not start earlier: HAProxy marks a node whose /readyz says 503
down and shuts its open sessions (the balancer role's `on-marked-down shutdown-sessions`).
"""
from __future__ import annotations

import fcntl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import local
from prometheus_client.parser import text_string_to_metric_families

POLICY_FILE = local.ROOT / "playbooks/vars/demand.yml"
METRICS = ("ampere_llm_slots_busy", "ampere_llm_slots_total", "ampere_llm_queue_depth")


@dataclass(frozen=True)
class Policy:
    scale_out_queue: float      # mean requests waiting per node above this: one node more
    scale_in_saturation: float  # mean share of busy slots below this: one node less
    window: float               # seconds of samples the statistic (their mean) covers
    cooldown: float             # seconds after a scaling action before the next may happen
    min_nodes: int = 1
    max_nodes: int = 3          # the local pool keeps one of its 4 balancer slots for roll-outs

    @classmethod
    def load(cls, path: Path = POLICY_FILE, **overrides) -> Policy:
        """The shared thresholds (and OCI's window and cool-down), then the caller's overrides
        (the local pool's seconds-long window and cool-down, its min and max)."""
        import yaml  # Ansible's dependency, in the venv
        v = yaml.safe_load(path.read_text())
        p = cls(scale_out_queue=float(v["demand_scale_out_queue"]),
                scale_in_saturation=float(v["demand_scale_in_saturation"]),
                window=float(v["demand_window_seconds"]), cooldown=float(v["demand_cooldown_seconds"]))
        p = replace(p, **{k: x for k, x in overrides.items() if x is not None})
        if not (0 < p.scale_in_saturation <= 1 and p.scale_out_queue >= 0):
            raise ValueError(f"scale_in_saturation must be in (0, 1] and scale_out_queue >= 0: {p}")
        if not (1 <= p.min_nodes <= p.max_nodes):
            raise ValueError(f"need 1 <= min_nodes ({p.min_nodes}) <= max_nodes ({p.max_nodes})")
        return p


def node_load(pool: local.LocalPool, slot: str) -> dict[str, float] | None:
    """The node's busy slots, slot count and queue depth from its /metrics; None when it does not answer."""
    status, text = pool.node_get(slot, "/metrics")
    if status != 200:
        return None
    found = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
             if s.name in METRICS}
    return found if len(found) == len(METRICS) else None


def pool_load(loads: list[dict[str, float]]) -> tuple[float, float] | None:
    """(mean slot saturation, mean queue depth) over the nodes that answered."""
    loads = [x for x in loads if x["ampere_llm_slots_total"]]
    if not loads:
        return None
    return (sum(x["ampere_llm_slots_busy"] / x["ampere_llm_slots_total"] for x in loads) / len(loads),
            sum(x["ampere_llm_queue_depth"] for x in loads) / len(loads))


@dataclass
class Autoscaler:
    pool: local.LocalPool
    policy: Policy
    provider: local.LocalProvider | None = None
    poll: float = 1.0
    health_timeout: float = 180.0   # a new node must be UP at HAProxy by then
    drain_timeout: float = 60.0     # longest a stream may keep a leaving node
    log: Callable[[str], None] = local.log
    events: list[dict] = field(default_factory=list)     # what it did, with monotonic times
    samples: deque = field(default_factory=deque)        # (t, saturation, queue)

    def __post_init__(self):
        self.provider = self.provider or local.LocalProvider(self.pool)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._quiet_until = 0.0   # no action before this (cool-down, a fresh window)

    # ---- what the pool says ----------------------------------------------------------------------
    def serving(self) -> dict[str, str]:
        """slot -> node for the nodes HAProxy sends requests to (UP: not booting, not drained)."""
        stats = self.pool.stats()
        return {slot: s["node"] for slot, s in self.pool.state.slots.items()
                if stats.get(slot, {}).get("status") == "UP"}

    def sample(self) -> tuple[float, float] | None:
        now = time.monotonic()
        load = pool_load([x for x in (node_load(self.pool, slot) for slot in self.serving()) if x])
        if load is not None:
            self.samples.append((now, *load))
        while self.samples and self.samples[0][0] < now - self.policy.window:
            self.samples.popleft()
        return load

    def statistic(self) -> tuple[float, float] | None:
        """(saturation, queue), each the mean over the window, once the window holds samples taken
        after the last action from its start to its end."""
        if not self.samples or self.samples[-1][0] - self.samples[0][0] < self.policy.window - 2 * self.poll:
            return None
        n = len(self.samples)
        return sum(s for _, s, _ in self.samples) / n, sum(q for _, _, q in self.samples) / n

    # ---- one decision ----------------------------------------------------------------------------
    def step(self) -> str | None:
        """Sample, then decide."""
        self.sample()
        return self.decide()

    def leaving(self) -> str | None:
        """The slot of the node a scale-in would remove now: the newest serving one (the last the
        burst brought; OCI's pool picks by its own rules)."""
        serving = self.serving()
        return max(serving, key=lambda s: int(serving[s].rsplit("-n", 1)[1])) if serving else None

    def decide(self) -> str | None:
        """Scale when the statistic crosses a threshold outside the cool-down: "out", "in" or None."""
        stat = self.statistic()
        if stat is None or time.monotonic() < self._quiet_until:
            return None
        saturation, queue = stat
        size = len(self.provider.nodes())
        if queue > self.policy.scale_out_queue and size < self.policy.max_nodes:
            self._scale_out(stat)
            return "out"
        if saturation < self.policy.scale_in_saturation and size > self.policy.min_nodes:
            self._scale_in(stat)
            return "in"
        return None

    def _event(self, action: str, node: str | None, stat: tuple[float, float], **extra) -> None:
        e = {"t": time.monotonic(), "action": action, "node": node, "saturation": round(stat[0], 3),
             "queue": round(stat[1], 3), "nodes": len(self.provider.nodes()), **extra}
        self.events.append(e)
        self.log(f"autoscale: {action} {node or ''} (over {self.policy.window:.0f} s: mean saturation "
                 f"{stat[0]:.2f}, mean queue {stat[1]:.2f}; {e['nodes']} node(s)){' ' + str(extra) if extra else ''}")

    def _after_action(self) -> None:
        self.samples.clear()
        self._quiet_until = time.monotonic() + self.policy.cooldown

    def _scale_out(self, stat: tuple[float, float]) -> None:
        self._event("scale-out", None, stat)
        before = {n.id for n in self.provider.nodes()}
        try:
            (node,) = self.provider.grow(self.pool.state.image, 1)
            deadline = time.monotonic() + self.health_timeout
            while node.id not in self.serving().values():
                if time.monotonic() > deadline:
                    raise local.PoolError(f"{node.id} not UP at HAProxy after {self.health_timeout:.0f} s")
                time.sleep(0.25)
            self._event("serving", node.id, stat)
        except (local.PoolError, local.HAProxyError):
            # A node that never served goes again (OCI terminates an instance that fails to launch).
            for n in self.provider.nodes():
                if n.id not in before:
                    self.provider.remove(n)
                    self._event("failed", n.id, stat)
            raise
        finally:
            self._after_action()

    def _scale_in(self, stat: tuple[float, float]) -> None:
        serving = self.serving()
        if len(serving) <= self.policy.min_nodes:
            return
        slot = self.leaving()
        node = next(n for n in self.provider.nodes() if n.id == serving[slot])
        try:
            self.provider.drain(node)
            open_at_drain = self.provider.in_flight(node)
            self._event("drain", node.id, stat, open=open_at_drain)
            # Only HAProxy drains while streams run: a node whose /readyz turns 503 is marked down
            # after `fall` checks, and the balancer then shuts its sessions (on-marked-down
            # shutdown-sessions, so a dead node's streams do not hang). The node's own drain
            # (/readyz 503, new work refused) starts when it is removed, with nothing left open.
            deadline = time.monotonic() + self.drain_timeout
            while (left := self.provider.in_flight(node)) != 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            self.provider.remove(node)
            self._event("removed", node.id, stat, open_at_removal=left)
        finally:
            self._after_action()

    # ---- the loop --------------------------------------------------------------------------------
    def run(self) -> None:
        """Until stop(). One controller per pool: a second one would boot nodes into the same slots."""
        self.pool.dir.mkdir(parents=True, exist_ok=True)
        with open(self.pool.dir / "autoscale.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise local.PoolError(f"another autoscaler runs on pool {self.pool.c.name}") from None
            self._loop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                self.step()
            except (local.PoolError, local.HAProxyError) as e:  # logged; the controller keeps going
                self.log(f"autoscale: {e}")
                self._after_action()
            self._stop.wait(max(0.0, self.poll - (time.monotonic() - t)))

    def start(self) -> Autoscaler:
        self._thread = threading.Thread(target=self.run, name="autoscaler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 120) -> None:
        """Stop after the current step (a scale-in under way finishes its drain first)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
