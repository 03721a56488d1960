# The roll-out Provider (module_utils/rollout.py) for an OCI instance pool attached to an OCI load balancer.
from __future__ import annotations

import time

from ansible_collections.ampere.llm.plugins.module_utils.oci_common import OciError
from ansible_collections.ampere.llm.plugins.module_utils.rollout import Node

try:
    from oci.core import models as cm
    from oci.load_balancer import models as lbm
except ImportError:
    pass


class OciPoolProvider:
    """Nodes are the pool's instances; health is what the load balancer's backend-set health says.

    `configs` maps image OCID -> instance configuration OCID: growing with an image switches the
    pool to its configuration (OCI launches new instances from the pool's configuration)."""

    def __init__(self, oci, compartment_id, pool_id, lb_id, backend_set, port, configs):
        self.o, self.comp, self.pool_id = oci, compartment_id, pool_id
        self.lb_id, self.bs, self.port, self.configs = lb_id, backend_set, port, configs
        self._image, self._backend = {}, {}

    def _instances(self):
        return [i for i in self.o.list_all(self.o.management.list_instance_pool_instances, self.comp, self.pool_id)
                if i.state.upper() not in ("TERMINATING", "TERMINATED")]

    def _node(self, instance_id):
        if instance_id not in self._image:
            self._image[instance_id] = self.o.call(self.o.compute.get_instance, instance_id).data.image_id
        return Node(instance_id, self._image[instance_id])

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
        return [self._node(i.id) for i in self._instances()]

    def healthy(self):
        lb = self.o.call(self.o.lb.get_load_balancer, self.lb_id).data
        registered = {b.name for b in lb.backend_sets[self.bs].backends or []}
        h = self.o.call(self.o.lb.get_backend_set_health, self.lb_id, self.bs).data
        bad = set(h.critical_state_backend_names or []) | set(h.warning_state_backend_names or []) \
            | set(h.unknown_state_backend_names or [])
        return {n.id for n in self.nodes() if (name := self.backend_name(n)) in registered and name not in bad}

    def _pool(self):
        return self.o.call(self.o.management.get_instance_pool, self.pool_id).data

    def _set_pool(self, **changes):
        self.o.call(self.o.management.update_instance_pool, self.pool_id, cm.UpdateInstancePoolDetails(**changes))
        self.o.wait(self.o.management.get_instance_pool, self.pool_id, {"RUNNING"}, "instance pool")

    def grow(self, image, count):
        before = {i.id for i in self._instances()}
        size = self._pool().size + count
        self._set_pool(instance_configuration_id=self.configs[image], size=size)
        deadline = time.monotonic() + self.o.timeout
        while True:
            now = self._instances()
            new = [i for i in now if i.id not in before]
            if len(new) >= count and all(i.state.upper() == "RUNNING" for i in new):
                return [self._node(i.id) for i in new]
            if time.monotonic() > deadline:
                raise OciError(f"pool grew to {size} but its new instances are {[i.state for i in new]} "
                               f"after {self.o.timeout}s")
            time.sleep(self.o.poll)

    def use_image(self, image):
        if image in self.configs:
            self._set_pool(instance_configuration_id=self.configs[image])

    def drain(self, node):
        name = self.backend_name(node)
        resp = self.o.call(self.o.lb.update_backend, lbm.UpdateBackendDetails(
            weight=1, backup=False, drain=True, offline=False), self.lb_id, self.bs, name)
        self.o.wait_lb_work(resp, f"drain backend {name}")

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
