# The rolling replacement of a pool's nodes with a new image, written once for every provider.
#
# A pool behind a load balancer gets new-image nodes first (surge), the balancer must report
# them healthy, and only then are old nodes drained (no new requests; running streams finish)
# and removed. The number of nodes serving traffic never drops below `min_healthy`. If the new
# nodes never become healthy, they are removed again and the old ones keep serving (roll-back).
#
# Providers (OCI instance pool + OCI load balancer; local nspawn containers + HAProxy) implement
# the small Provider protocol below. This file has no Ansible, OCI or network code: the tests
# drive it with a fake provider and a fake clock.
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol


@dataclass(frozen=True)
class Node:
    id: str      # the provider's id (OCI instance OCID, container name)
    image: str   # what the node was built from (OCI image OCID, local image name)


class Provider(Protocol):
    """What a pool must offer to be rolled. Every call may block until its own action is done."""

    def nodes(self) -> list[Node]:
        """Every node in the pool now, whatever its image or health."""

    def healthy(self) -> set[str]:
        """Ids of the nodes the BALANCER reports healthy (its health checks, not the node's word)."""

    def grow(self, image: str, count: int) -> list[Node]:
        """Add `count` nodes built from `image` to the pool and the balancer; return them once they
        exist (booted, maybe not healthy yet). New nodes the pool adds later use `image` too."""

    def use_image(self, image: str) -> None:
        """Make `image` the one future nodes are built from (used to undo grow's choice on roll-back)."""

    def drain(self, node: Node) -> None:
        """Tell the balancer to send `node` no new requests; requests in flight continue."""

    def in_flight(self, node: Node) -> Optional[int]:
        """Requests still running on `node`, or None when the provider cannot tell (then the full
        drain timeout is waited)."""

    def remove(self, node: Node) -> None:
        """Take `node` out of the balancer and the pool (pool size shrinks by one) and destroy it."""


class RolloutFailed(Exception):
    def __init__(self, message, events):
        super().__init__(message)
        self.events = events


@dataclass
class Plan:
    image: str
    old: list[Node]            # nodes to replace, in order
    batches: list[list[Node]]  # replaced together: `len(batch)` new nodes are added per batch
    min_healthy: int


def plan(nodes: list[Node], healthy: set[str], image: str, batch_size: int = 0,
         min_healthy: Optional[int] = None) -> Plan:
    """Decide what to replace and in which batches (pure). batch_size 0 means all at once."""
    old = sorted((n for n in nodes if n.image != image), key=lambda n: n.id)
    size = batch_size if batch_size > 0 else max(1, len(old))
    serving = len([n for n in nodes if n.id in healthy])
    if min_healthy is None:
        # Never serve with fewer nodes than serve right now (capped at the old count: nodes already
        # on the new image keep serving and are not counted twice).
        min_healthy = serving
    if min_healthy > serving:
        raise ValueError(f"min_healthy={min_healthy} but only {serving} node(s) are healthy now: "
                         f"fix the pool before rolling it")
    return Plan(image, old, [old[i:i + size] for i in range(0, len(old), size)], min_healthy)


@dataclass
class Rollout:
    """Carry out a Plan on a Provider. Time comes in through `clock`/`sleep` so tests can fake it."""

    provider: Provider
    health_timeout: float = 900.0   # new nodes must be healthy by then, else roll back
    drain_timeout: float = 300.0    # longest a running request may keep an old node alive
    poll: float = 5.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    log: Callable[[str], None] = lambda msg: None
    events: list[dict] = field(default_factory=list)

    def _event(self, action, node=None, **extra):
        self.events.append(dict(action=action, node=node.id if node else None, t=self.clock(), **extra))
        self.log(f"{action} {node.id if node else ''} {extra or ''}".strip())

    def _until(self, done, timeout):
        """Poll `done()` until true or `timeout` seconds pass; returns its last value."""
        deadline = self.clock() + timeout
        while not (ok := done()) and self.clock() < deadline:
            self.sleep(self.poll)
        return ok

    def run(self, p: Plan) -> list[dict]:
        if not p.old:
            return self.events
        previous = Counter(n.image for n in p.old).most_common(1)[0][0]
        for batch in p.batches:
            new = self.provider.grow(p.image, len(batch))
            for n in new:
                self._event("grow", n, image=p.image)
            ids = {n.id for n in new}
            if not self._until(lambda: ids <= self.provider.healthy(), self.health_timeout):
                sick = sorted(ids - self.provider.healthy())
                for n in new:
                    self.provider.remove(n)
                    self._event("remove", n, reason="rollback")
                self.provider.use_image(previous)
                self._event("rollback", image=previous)
                raise RolloutFailed(
                    f"new node(s) {', '.join(sick)} on image {p.image} were not healthy at the balancer "
                    f"within {self.health_timeout:.0f}s: removed the new nodes, the old ones keep serving "
                    f"and new nodes use {previous} again", self.events)
            self._event("healthy", None, nodes=sorted(ids))
            for n in batch:
                self._drain_one(n, p.min_healthy)
            self._until(lambda: all(self.provider.in_flight(n) == 0 for n in batch), self.drain_timeout)
            for n in batch:
                self.provider.remove(n)
                self._event("remove", n, reason="replaced")
        return self.events

    def _drain_one(self, node, min_healthy):
        drained = {e["node"] for e in self.events if e["action"] == "drain"}
        removed = {e["node"] for e in self.events if e["action"] == "remove"}
        # Serving after this drain = healthy, not drained, not removed, minus this node.
        serving = lambda: len(self.provider.healthy() - drained - removed - {node.id})  # noqa: E731
        if not self._until(lambda: serving() >= min_healthy, self.health_timeout):
            raise RolloutFailed(
                f"draining {node.id} would leave {serving()} healthy node(s), below min_healthy="
                f"{min_healthy}: stopped with the old node still serving", self.events)
        self.provider.drain(node)
        self._event("drain", node)
