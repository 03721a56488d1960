# The roll-out Provider (module_utils/rollout.py) for an OCI instance pool attached to an OCI load balancer.
from __future__ import annotations

import time
from datetime import datetime, timezone

from ansible_collections.ampere.llm.plugins.module_utils.oci_common import OciError
from ansible_collections.ampere.llm.plugins.module_utils.oci_common import core_models as cm
from ansible_collections.ampere.llm.plugins.module_utils.oci_common import lb_models as lbm
from ansible_collections.ampere.llm.plugins.module_utils.rollout import Node


class OciPoolProvider:
    """Nodes are the pool's instances; health is each backend's own status at the load balancer.

    A node's "image" here is the INSTANCE CONFIGURATION it was launched from: a new image, shape,
    OCPU count, memory, SSH key or user data each make a new configuration (oci_instance_configuration
    names them by a hash of all of it), so any of those changes rolls the pool, not only a new image."""

    def __init__(self, oci, compartment_id, pool_id, lb_id, backend_set, port):
        self.o, self.comp, self.pool_id = oci, compartment_id, pool_id
        self.lb_id, self.bs, self.port = lb_id, backend_set, port
        self._config, self._backend = {}, {}

    def _instances(self):
        return [i for i in self.o.list_all(self.o.management.list_instance_pool_instances, self.comp, self.pool_id)
                if i.state.upper() not in ("TERMINATING", "TERMINATED")]

    def _node(self, inst):
        return Node(inst.id, inst.instance_configuration_id)

    def backend_name(self, node):
        """OCI names a pool's backends <private IP>:<port> (primary VNIC)."""
        if node.id not in self._backend:
            att = self.o.list_all(self.o.compute.list_vnic_attachments, self.comp, instance_id=node.id)
            if not att:
                return None  # still launching: no VNIC yet
            ip = self.o.call(self.o.network.get_vnic, att[0].vnic_id).data.private_ip
            self._backend[node.id] = f"{ip}:{self.port}"
        return self._backend[node.id]

    def nodes(self):
        return [self._node(i) for i in self._instances()]

    def healthy(self):
        """Nodes whose backend serves: its OWN health is OK and it is not drained or offline.
        BackendSetHealth only names critical, warning and unknown backends: one registered a moment
        ago has no health data, is in none of those lists, and would pass for healthy; so each
        backend's status is read. A drained backend still passes its checks but takes no new requests."""
        bs = self.o.call(self.o.lb.get_backend_set, self.lb_id, self.bs).data
        serving = {b.name for b in bs.backends or [] if not b.drain and not b.offline}
        ok = set()
        for n in self.nodes():
            name = self.backend_name(n)
            if name in serving and self.o.call(self.o.lb.get_backend_health, self.lb_id, self.bs,
                                               name).data.status == "OK":
                ok.add(n.id)
        return ok

    def _pool(self):
        return self.o.call(self.o.management.get_instance_pool, self.pool_id).data

    def _set_pool(self, what, **changes):
        """Change the pool and wait for what OCI does about it: a launch that fails fails here, at
        once, with OCI's message from the compute work request."""
        since = datetime.now(timezone.utc)
        resp = self.o.call(self.o.management.update_instance_pool, self.pool_id, cm.UpdateInstancePoolDetails(**changes))
        if "size" in changes:
            self.o.wait_compute_work(resp, what, resource_id=self.pool_id, since=since)
        self.o.wait(self.o.management.get_instance_pool, self.pool_id, {"RUNNING"}, "instance pool")

    def grow(self, image, count):
        before = {i.id for i in self._instances()}
        size = self._pool().size + count
        self._set_pool(f"grow the pool to {size} nodes", instance_configuration_id=image, size=size)
        deadline = time.monotonic() + self.o.timeout
        while True:
            new = [i for i in self._instances() if i.id not in before]
            if len(new) >= count and all(i.state.upper() == "RUNNING" for i in new):
                return [self._node(i) for i in new]
            if time.monotonic() > deadline:
                raise OciError(f"pool grew to {size} but its new instances are {[i.state for i in new]} "
                               f"after {self.o.timeout}s")
            time.sleep(self.o.poll)

    def use_image(self, image):
        # The size too: a grow that failed half-way left it above the nodes there are; with it set
        # back, the pool stops trying to launch the missing ones and no node is terminated.
        self._set_pool("roll back the pool", instance_configuration_id=image, size=len(self._instances()))

    def _backend_update(self, node, drain):
        name = self.backend_name(node)
        resp = self.o.call(self.o.lb.update_backend, lbm.UpdateBackendDetails(
            weight=1, backup=False, drain=drain, offline=False), self.lb_id, self.bs, name)
        self.o.wait_lb_work(resp, f"{'drain' if drain else 'undrain'} backend {name}")

    def drain(self, node):
        self._backend_update(node, True)

    def undrain(self, node):
        self._backend_update(node, False)

    def in_flight(self, node):
        # OCI's load balancer API has no per-backend connection count: the whole drain timeout is waited.
        return None

    def remove(self, node):
        self.o.call(self.o.management.detach_instance_pool_instance, self.pool_id,
                    cm.DetachInstancePoolInstanceDetails(instance_id=node.id, is_decrement_size=True,
                                                         is_auto_terminate=True))
        deadline = time.monotonic() + self.o.timeout
        while node.id in {i.id for i in self._instances()}:
            if time.monotonic() > deadline:
                raise OciError(f"instance {node.id} still in the pool {self.o.timeout}s after detaching it")
            time.sleep(self.o.poll)
