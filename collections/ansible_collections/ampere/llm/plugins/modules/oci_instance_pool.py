#!/usr/bin/python
# The instance pool of ampere-llm nodes: spread over fault domains and attached to the balancer's backend set.
from __future__ import annotations

DOCUMENTATION = r"""
module: oci_instance_pool
short_description: Instance pool of ampere-llm nodes behind the load balancer
version_added: 0.1.0
author:
- ampere-llm maintainers (!UNKNOWN)
description:
- Creates (or finds by display name) an instance pool placed in one availability domain and attached to the load
  balancer's backend set; OCI registers each node as a backend.
- Before launching, checks that the configuration's shape is offered in that availability domain (list_shapes); without
  availability_domain, the first one that offers the shape is used.
- Fault domains are OCI's best-effort spread unless fault_domains pins them (a pinned list can fail a launch that
  best effort would have placed).
- Launches are asynchronous, so the module waits on the compute work request and fails at once with OCI's own message
  (for example Out of host capacity, or a service limit). A pool whose first launch failed is terminated again (it
  would keep nothing running) so a re-run starts clean.
- With pre_termination_timeout, a node the pool removes (autoscaling scale-in, pool termination) first leaves the
  balancer drained and is terminated only after that many seconds, so its streams can finish.
- On an existing pool the size is left to autoscaling unless enforce_size is true, and the instance configuration
  is not switched (OCI would not replace running nodes); switching images is oci_rollout's job. Without instance_configuration_id
  it only looks the pool up.
options:
  name:
    type: str
    description: Display name.
    default: ampere-llm-pool
  instance_configuration_id:
    type: str
    description: Needed to create the pool; omit it to only look an existing pool up.
  subnet_id:
    type: str
    description: Node subnet OCID; required with state=present.
  state:
    type: str
    description: present makes sure it exists; absent deletes (terminates) the pool and its instances.
    default: present
    choices:
    - present
    - absent
  size:
    type: int
    description: Nodes at creation.
    default: 2
  enforce_size:
    type: bool
    description: Also set the size of an existing pool.
    default: false
  availability_domain:
    type: str
    description: Availability domain name (e.g. Uocm:US-ASHBURN-AD-2); defaults to the first one offering the shape.
  fault_domains:
    type: list
    description: Fault domains to pin the nodes to; empty means OCI spreads them on a best-effort basis.
    elements: str
    default: []
  pre_termination_timeout:
    type: int
    description: Seconds a node the pool removes stays up, drained at the balancer, before it is terminated; 0 turns
      the pre-termination action off.
    default: 360
  load_balancer_id:
    type: str
    description: Load balancer OCID; required with state=present.
  backend_set:
    type: str
    description: Backend set name.
    default: ampere-llm
  backend_port:
    type: int
    description: Nodes' port.
    default: 80
notes:
- Supports check mode and diff mode.
extends_documentation_fragment:
- ampere.llm.oci
"""

EXAMPLES = r"""
- name: Pool
  ampere.llm.oci_instance_pool:
    compartment_id: "{{ compartment_id }}"
    instance_configuration_id: "{{ config.instance_configuration_id }}"
    subnet_id: "{{ network.node_subnet_id }}"
    load_balancer_id: "{{ lb.load_balancer_id }}"
"""

RETURN = r"""
instance_pool_id:
  description: Pool OCID (null when looking up a pool that does not exist).
  type: str
  returned: success
size:
  description: Pool size.
  type: int
  returned: success
instance_configuration_id:
  description: The configuration the pool launches new nodes from.
  type: str
  returned: success
availability_domain:
  description: Where a new pool was placed.
  type: str
  returned: when the pool was created
"""

from datetime import datetime, timezone

from ansible_collections.ampere.llm.plugins.module_utils.oci_common import STATE, OciError, OciModule
from ansible_collections.ampere.llm.plugins.module_utils.oci_common import core_models as m


def wait_instances(o, pool_id, compartment_id, size):
    """Until the pool runs and exactly `size` of its instances are Running (the work request succeeded)."""
    o.wait(o.management.get_instance_pool, pool_id, {"RUNNING"}, "instance pool")

    def probe():
        states = [i.state.upper() for i in o.list_all(o.management.list_instance_pool_instances, compartment_id, pool_id)]
        return (states.count("RUNNING") == size == len(states),
                f"instance pool {pool_id}: instances {states} not all RUNNING after {o.timeout}s")
    o.until(probe)


def lifecycle(timeout):
    """OCI's pre-termination action: a leaving node waits `timeout` s before termination (0: off)."""
    return m.InstancePoolLifecycleManagementDetails(lifecycle_actions=m.InstancePoolLifecycleActionsDetails(
        pre_termination=m.InstancePoolPreTerminationActionDetails(
            is_enabled=timeout > 0, timeout=max(timeout, 1), on_timeout=m.InstancePoolPreTerminationActionHandleTimeoutDetails(
                preserve_block_volume_mode="DELETE_ALWAYS", preserve_boot_volume_mode="DELETE_ALWAYS"))))


def lifecycle_timeout(pool):
    """The pool's pre-termination timeout as this module sets it (0 when off or absent)."""
    pre = getattr(getattr(getattr(pool, "lifecycle_management", None), "lifecycle_actions", None), "pre_termination", None)
    return pre.timeout if pre is not None and pre.is_enabled else 0


def placement_ad(o, comp, config_id, wanted):
    """The availability domain to launch in, after checking the configuration's shape is offered there."""
    shape = o.call(o.management.get_instance_configuration, config_id).data.instance_details.launch_details.shape
    ads = [a.name for a in o.list_all(o.identity.list_availability_domains, o.config.get("tenancy") or comp)]
    if wanted and wanted not in ads:
        raise OciError(f"availability_domain {wanted!r} is not one of this region's: {', '.join(ads)}")
    offering = [ad for ad in ([wanted] if wanted else ads)
                if shape in {s.shape for s in o.list_all(o.compute.list_shapes, comp, availability_domain=ad)}]
    if not offering:
        where = f"availability domain {wanted}" if wanted else f"any availability domain ({', '.join(ads)})"
        others = [ad for ad in ads if ad != wanted and shape in {
            s.shape for s in o.list_all(o.compute.list_shapes, comp, availability_domain=ad)}] if wanted else []
        raise OciError(f"shape {shape} is not offered in {where} of this region for this compartment"
                       + (f"; it is in {', '.join(others)}: set availability_domain to one of them" if others else
                          "; choose another shape (node_shape) or region, or ask for the shape's limit"))
    return offering[0]


def main():
    mod = OciModule(dict(
        name=dict(type="str", default="ampere-llm-pool"),
        instance_configuration_id=dict(type="str"),
        subnet_id=dict(type="str"),
        state=STATE,
        size=dict(type="int", default=2),
        enforce_size=dict(type="bool", default=False),
        availability_domain=dict(type="str"),
        fault_domains=dict(type="list", elements="str", default=[]),
        pre_termination_timeout=dict(type="int", default=360),
        load_balancer_id=dict(type="str"),
        backend_set=dict(type="str", default="ampere-llm"),
        backend_port=dict(type="int", default=80),
    ), required_if=[("state", "present", ["subnet_id", "load_balancer_id"])])
    p, o = mod.params, mod.oci
    comp = p["compartment_id"]
    if p["size"] < 1:
        mod.fail_json(msg=f"size={p['size']}: a pool serves with at least one node")
    if p["pre_termination_timeout"] < 0:
        mod.fail_json(msg="pre_termination_timeout must be 0 (off) or more seconds")

    def create():
        ad = placement_ad(o, comp, p["instance_configuration_id"], p["availability_domain"])
        since = datetime.now(timezone.utc)
        resp = o.call(o.management.create_instance_pool, m.CreateInstancePoolDetails(
            compartment_id=comp, display_name=p["name"], instance_configuration_id=p["instance_configuration_id"],
            size=p["size"], lifecycle_management=lifecycle(p["pre_termination_timeout"]),
            placement_configurations=[m.CreateInstancePoolPlacementConfigurationDetails(
                availability_domain=ad, fault_domains=p["fault_domains"] or None, primary_subnet_id=p["subnet_id"])],
            load_balancers=[m.AttachLoadBalancerDetails(
                load_balancer_id=p["load_balancer_id"], backend_set_name=p["backend_set"],
                port=p["backend_port"], vnic_selection="PrimaryVnic")]))
        pool = resp.data
        try:
            o.wait_compute_work(resp, f"launch of pool {p['name']} in {ad}", resource_id=pool.id, since=since)
        except OciError as e:
            # Nothing of it serves, and the pool would go on asking for its size: remove it so a
            # re-run (another AD, later) starts clean.
            o.delete(o.management.terminate_instance_pool, o.management.get_instance_pool, pool.id, "instance pool")
            raise OciError(f"{e} The half-made pool was terminated.") from None
        wait_instances(o, pool.id, comp, p["size"])
        return pool, ad

    def body():
        cur = o.find(o.management.list_instance_pools, comp, name=p["name"])
        if p["state"] == "absent":  # terminating a pool terminates its instances
            if cur and not mod.check_mode:
                o.delete(o.management.terminate_instance_pool, o.management.get_instance_pool, cur.id, "instance pool")
            return mod.result(bool(cur), dict(instance_pool_id=None, size=0, instance_configuration_id=None),
                              before=dict(name=p["name"]) if cur else {})
        if cur is None:
            if not p["instance_configuration_id"]:  # a look-up (rollout.yml): say there is none
                return mod.result(False, dict(instance_pool_id=None, size=0, instance_configuration_id=None))
            after = dict(name=p["name"], size=p["size"], instance_configuration_id=p["instance_configuration_id"],
                         fault_domains=p["fault_domains"] or "best effort", backend_set=p["backend_set"],
                         pre_termination_timeout=p["pre_termination_timeout"])
            if mod.check_mode:
                return mod.result(True, dict(instance_pool_id=None, size=p["size"],
                                             instance_configuration_id=p["instance_configuration_id"]), after=after)
            pool, ad = create()
            return mod.result(True, dict(instance_pool_id=pool.id, size=p["size"], availability_domain=ad,
                                         instance_configuration_id=p["instance_configuration_id"]), after=dict(after, availability_domain=ad))

        pool = o.call(o.management.get_instance_pool, cur.id).data
        if p["instance_configuration_id"] and pool.instance_configuration_id != p["instance_configuration_id"]:
            mod.warn(f"pool {p['name']} launches from {pool.instance_configuration_id}, not the requested "
                     f"{p['instance_configuration_id']}: run playbooks/rollout.yml to move its nodes to it")
        before, after, changes = {}, {}, {}
        if p["enforce_size"] and pool.size != p["size"]:
            before["size"], after["size"], changes["size"] = pool.size, p["size"], p["size"]
        if p["instance_configuration_id"] and lifecycle_timeout(pool) != p["pre_termination_timeout"]:
            before["pre_termination_timeout"] = lifecycle_timeout(pool)
            after["pre_termination_timeout"] = p["pre_termination_timeout"]
            changes["lifecycle_management"] = lifecycle(p["pre_termination_timeout"])
        if changes and not mod.check_mode:
            since = datetime.now(timezone.utc)
            resp = o.call(o.management.update_instance_pool, pool.id, m.UpdateInstancePoolDetails(**changes))
            if "size" in changes:
                o.wait_compute_work(resp, f"resize of pool {p['name']}", resource_id=pool.id, since=since)
                wait_instances(o, pool.id, comp, p["size"])
        return mod.result(bool(changes), dict(instance_pool_id=pool.id, size=after.get("size", pool.size),
                                              instance_configuration_id=pool.instance_configuration_id),
                          before=before, after=after)

    mod.run(body)


if __name__ == "__main__":
    main()
