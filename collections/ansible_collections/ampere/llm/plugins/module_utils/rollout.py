# The rolling replacement of a pool's nodes with a new image, written once for every provider.
#
# A pool behind a load balancer gets new-image nodes first (surge), the balancer must report
# them healthy, and only then are old nodes drained (no new requests; running streams finish)
# and removed. The number of nodes serving traffic never drops below `min_healthy`. If anything
# fails after the first change (new nodes never healthy, a launch that fails, an API error), the
# roll-out is undone: the new nodes are removed, drained old nodes are put back in service and the
# pool builds from the previous image again (roll-back); the old nodes never stopped serving.
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
        """Roll-back: make `image` the one future nodes are built from again, and the pool's size the
        number of nodes it has now (grow may have raised it for nodes that never came)."""

    def drain(self, node: Node) -> None:
        """Tell the balancer to send `node` no new requests; requests in flight continue."""

    def undrain(self, node: Node) -> None:
        """Roll-back: send `node` new requests again."""

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
        keep = {n.id for n in self.provider.nodes()}  # grows as batches complete: never undone
        try:
            for batch in p.batches:
                keep |= self._batch(p, batch)
        except Exception as e:  # noqa: BLE001 - whatever failed, the pool goes back to how it was
            why = str(e)
            try:
                self._rollback(p, previous, keep)
            except Exception as undo:  # noqa: BLE001 - say both: what failed and what could not be undone
                raise RolloutFailed(f"{why}; the roll-back failed too ({undo}): check the pool by hand",
                                    self.events) from None
            raise RolloutFailed(f"{why}: rolled back (new nodes removed, drained old nodes serving again, "
                                f"new nodes use {previous} again)", self.events) from None
        return self.events

    def _batch(self, p, batch):
        new = self.provider.grow(p.image, len(batch))
        for n in new:
            self._event("grow", n, image=p.image)
        ids = {n.id for n in new}
        if not self._until(lambda: ids <= self.provider.healthy(), self.health_timeout):
            sick = sorted(ids - self.provider.healthy())
            raise RuntimeError(f"new node(s) {', '.join(sick)} on image {p.image} were not healthy at the "
                               f"balancer within {self.health_timeout:.0f}s; the old ones keep serving")
        self._event("healthy", None, nodes=sorted(ids))
        for n in batch:
            self._drain_one(n, p.min_healthy)
        self._until(lambda: all(self.provider.in_flight(n) == 0 for n in batch), self.drain_timeout)
        for n in batch:
            self.provider.remove(n)
            self._event("remove", n, reason="replaced")
        return ids

    def _rollback(self, p, previous, keep):
        """Undo the batch that failed: remove the nodes it added that are still there (earlier,
        completed batches stay: their old nodes are gone), put its drained old nodes back in service,
        build from `previous` again (and the pool's size back to its node count)."""
        removed = {e["node"] for e in self.events if e["action"] == "remove"}
        for n in self.provider.nodes():
            if n.id not in keep:
                self.provider.remove(n)
                self._event("remove", n, reason="rollback")
        for n in p.old:
            if n.id in {e["node"] for e in self.events if e["action"] == "drain"} and n.id not in removed:
                self.provider.undrain(n)
                self._event("undrain", n)
        self.provider.use_image(previous)
        self._event("rollback", image=previous)

    def _drain_one(self, node, min_healthy):
        drained = {e["node"] for e in self.events if e["action"] == "drain"}
        removed = {e["node"] for e in self.events if e["action"] == "remove"}

        def serving():
            """Serving after this drain: healthy, not drained, not removed, minus this node."""
            return len(self.provider.healthy() - drained - removed - {node.id})
        if not self._until(lambda: serving() >= min_healthy, self.health_timeout):
            raise RuntimeError(f"draining {node.id} would leave {serving()} healthy node(s), below "
                               f"min_healthy={min_healthy}")
        self.provider.drain(node)
        self._event("drain", node)
