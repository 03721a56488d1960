"""The shared roll-out algorithm (module_utils/rollout.py) on a fake pool with a fake clock: pure and fast."""
import pytest
from ansible_collections.ampere.llm.plugins.module_utils.rollout import Node, Rollout, RolloutFailed, plan


class FakePool:
    """A pool whose balancer marks a node healthy `boot` fake seconds after it is added, unless its
    image is bad. It checks the invariants itself, at the moment each action happens."""

    def __init__(self, clock, old=3, boot=30.0, bad_images=(), busy_for=0.0, drain_timeout=300):
        self.clock, self.boot, self.bad, self.busy_for = clock, boot, set(bad_images), busy_for
        self.drain_timeout = drain_timeout
        self.members = {f"old{i}": (Node(f"old{i}", "img-1"), -1e9) for i in range(old)}
        self.drained, self.template, self.seq, self.log = {}, "img-1", 0, []
        self.lowest_serving = len(self.members)

    def nodes(self):
        return [n for n, _ in self.members.values()]

    def healthy(self):
        return {i for i, (n, t) in self.members.items() if n.image not in self.bad and self.clock() - t >= self.boot}

    def serving(self):
        return len(self.healthy() - set(self.drained))

    def grow(self, image, count):
        self.template, new = image, []
        for _ in range(count):
            self.seq += 1
            n = Node(f"new{self.seq}", image)
            self.members[n.id] = (n, self.clock())
            new.append(n)
        self.log.append(("grow", [n.id for n in new]))
        return new

    def use_image(self, image):
        self.template = image

    def drain(self, node):
        self.drained[node.id] = self.clock()
        self.log.append(("drain", node.id))
        self.lowest_serving = min(self.lowest_serving, self.serving())

    def undrain(self, node):
        del self.drained[node.id]
        self.log.append(("undrain", node.id))

    def in_flight(self, node):
        return 0 if self.clock() - self.drained[node.id] >= self.busy_for else 1

    def remove(self, node):
        assert node.id.startswith("new") or node.id in self.drained, f"{node.id} removed before it was drained"
        assert node.id.startswith("new") or self.in_flight(node) == 0 \
            or self.clock() - self.drained[node.id] >= self.drain_timeout
        del self.members[node.id]
        self.log.append(("remove", node.id))
        self.lowest_serving = min(self.lowest_serving, self.serving())


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def roll(pool, clock, image="img-2", **kw):
    p = plan(pool.nodes(), pool.healthy(), image, batch_size=kw.pop("batch_size", 0))
    r = Rollout(pool, clock=clock, sleep=clock.sleep, poll=5, **kw)
    return p, r.run(p)


def test_all_at_once_grows_first_then_drains_then_removes():
    clock = Clock()
    pool = FakePool(clock)
    p, events = roll(pool, clock)
    assert [a for a, _ in pool.log] == ["grow", "drain", "drain", "drain", "remove", "remove", "remove"]
    assert sorted(n.image for n in pool.nodes()) == ["img-2"] * 3
    assert pool.lowest_serving >= p.min_healthy == 3
    assert pool.template == "img-2"


def test_batches_of_one_never_fall_below_the_minimum():
    clock = Clock()
    pool = FakePool(clock, old=4)
    p, events = roll(pool, clock, batch_size=1)
    assert len(p.batches) == 4
    assert [a for a, _ in pool.log] == ["grow", "drain", "remove"] * 4
    assert pool.lowest_serving >= 4
    assert {n.image for n in pool.nodes()} == {"img-2"} and len(pool.nodes()) == 4


def test_drain_waits_for_requests_in_flight_but_not_past_the_timeout():
    clock = Clock()
    pool = FakePool(clock, old=1, busy_for=42)
    roll(pool, clock, drain_timeout=300)
    (drain_t,) = [t for a, t in pool.drained.items()]
    removed_at = clock.now
    assert removed_at - drain_t >= 42  # waited for the stream to finish ...
    clock2 = Clock()
    pool2 = FakePool(clock2, old=1, busy_for=10_000, drain_timeout=60)
    roll(pool2, clock2, drain_timeout=60)  # ... but a stuck one does not block the roll forever
    assert {n.image for n in pool2.nodes()} == {"img-2"}


def test_unhealthy_new_nodes_are_rolled_back_and_old_ones_keep_serving():
    clock = Clock()
    pool = FakePool(clock, bad_images={"img-bad"})
    with pytest.raises(RolloutFailed, match="not healthy") as err:
        roll(pool, clock, image="img-bad", health_timeout=120)
    assert sorted(n.id for n in pool.nodes()) == ["old0", "old1", "old2"]
    assert not pool.drained, "no old node may be drained when the new ones are not healthy"
    assert pool.template == "img-1"
    assert [e["action"] for e in err.value.events][-1] == "rollback"
    assert clock.now >= 120


def test_a_failure_after_draining_undoes_the_batch_and_keeps_completed_ones():
    """Batch 2's removal fails (an API error after its old node was drained): batch 2's new node goes,
    its old node serves again, batch 1 (done) stays, future nodes use the old image."""
    clock = Clock()
    pool = FakePool(clock, old=2)
    real_remove = pool.remove

    def remove(node):
        if node.id == "old1":
            raise RuntimeError("409 Conflict after every retry")
        real_remove(node)
    pool.remove = remove
    with pytest.raises(RolloutFailed, match="409 Conflict after every retry: rolled back") as err:
        roll(pool, clock, batch_size=1)
    assert sorted(n.id for n in pool.nodes()) == ["new1", "old1"]
    assert "old1" not in pool.drained, "the drained old node serves again"
    assert pool.template == "img-1"
    assert [e["action"] for e in err.value.events][-3:] == ["remove", "undrain", "rollback"]


def test_a_grow_that_fails_removes_what_it_launched():
    """The pool accepted the grow, launched one of two nodes, then failed (no capacity): the launched
    one is removed, nothing was drained, the template is back."""
    clock = Clock()
    pool = FakePool(clock, old=2)
    real_grow = pool.grow

    def grow(image, count):
        real_grow(image, 1)
        raise RuntimeError("Out of host capacity.")
    pool.grow = grow
    with pytest.raises(RolloutFailed, match="Out of host capacity.: rolled back"):
        roll(pool, clock)
    assert sorted(n.id for n in pool.nodes()) == ["old0", "old1"]
    assert pool.drained == {} and pool.template == "img-1"


def test_nothing_to_do_when_every_node_runs_the_image():
    clock = Clock()
    pool = FakePool(clock)
    p, events = roll(pool, clock, image="img-1")
    assert p.old == [] and events == [] and pool.log == []


def test_a_pool_that_is_already_unhealthy_is_refused():
    clock = Clock()
    pool = FakePool(clock)
    with pytest.raises(ValueError, match="only 3 node"):
        plan(pool.nodes(), pool.healthy(), "img-2", min_healthy=5)
