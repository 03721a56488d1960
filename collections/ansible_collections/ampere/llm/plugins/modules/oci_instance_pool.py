#!/usr/bin/python
# The instance pool of ampere-llm nodes: spread over fault domains and attached to the balancer's backend set.
from __future__ import annotations

DOCUMENTATION = r"""
module: oci_instance_pool
short_description: Instance pool of ampere-llm nodes behind the load balancer
version_added: 0.1.0
author:
- ampere-llm maintainers
description:
- Creates (or finds by display name) an instance pool placed in one availability domain (the first one, unless given)
  across fault_domains, and attached to the load balancer's backend set; OCI registers each node as a backend.
- Waits until the pool is RUNNING and every instance runs.
- On an existing pool the size is left to autoscaling unless enforce_size is true, and the instance configuration
  is not switched (OCI would not replace running nodes); switching images is oci_rollout's job. Without instance_configuration_id
  it only looks the pool up.
options:
  compartment_id:
    type: str
    description: Compartment OCID.
    required: true
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
    description: Defaults to the tenancy's first availability domain.
  fault_domains:
    type: list
    description: Fault domains to spread over.
    elements: str
    default:
    - FAULT-DOMAIN-1
    - FAULT-DOMAIN-2
    - FAULT-DOMAIN-3
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
  auth_type:
    type: str
    default: api_key
    choices:
    - api_key
    - instance_principal
    description: 'How to authenticate: the OCI config file''s API key, or instance principals (env OCI_CLI_AUTH).'
  config_file:
    type: path
    default: ~/.oci/config
    description: OCI config file (env OCI_CONFIG_FILE).
  config_profile:
    type: str
    default: DEFAULT
    description: Profile in the config file (env OCI_CONFIG_PROFILE).
  region:
    type: str
    description: Override the profile's region (env OCI_REGION).
  endpoint:
    type: str
    description: TEST ONLY - base URL of the local OCI stand-in of tests/oci (env AMPERE_LLM_OCI_ENDPOINT).
  wait_timeout:
    type: int
    default: 1800
    description: Seconds to wait for a resource to become ready.
  poll_interval:
    type: float
    default: 5.0
    description: Seconds between state polls (env AMPERE_LLM_OCI_POLL_INTERVAL).
requirements:
- oci (Python SDK) on the control node
notes:
- Supports check mode and diff mode.
- 'Common options of every ampere.llm oci_* module: auth_type (api_key|instance_principal, env OCI_CLI_AUTH), config_file
  (OCI_CONFIG_FILE), config_profile (OCI_CONFIG_PROFILE), region (OCI_REGION), wait_timeout, poll_interval; endpoint
  (AMPERE_LLM_OCI_ENDPOINT) is for tests only. See docs/oci.md.'
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
"""

from ansible_collections.ampere.llm.plugins.module_utils.oci_common import OciModule, OciError

try:
    from oci.core import models as m
except ImportError:
    pass


def wait_instances(o, pool_id, compartment_id, size):
    """Until the pool runs and exactly `size` of its instances are Running."""
    import time
    o.wait(o.management.get_instance_pool, pool_id, {"RUNNING"}, "instance pool")
    deadline = time.monotonic() + o.timeout
    while True:
        states = [i.state.upper() for i in o.list_all(o.management.list_instance_pool_instances, compartment_id, pool_id)]
        if states.count("RUNNING") == size == len(states):
            return
        if time.monotonic() > deadline:
            raise OciError(f"instance pool {pool_id}: instances {states} not all RUNNING after {o.timeout}s")
        time.sleep(o.poll)


def main():
    mod = OciModule(dict(
        compartment_id=dict(type="str", required=True),
        name=dict(type="str", default="ampere-llm-pool"),
        instance_configuration_id=dict(type="str"),
        subnet_id=dict(type="str"),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        size=dict(type="int", default=2),
        enforce_size=dict(type="bool", default=False),
        availability_domain=dict(type="str"),
        fault_domains=dict(type="list", elements="str", default=["FAULT-DOMAIN-1", "FAULT-DOMAIN-2", "FAULT-DOMAIN-3"]),
        load_balancer_id=dict(type="str"),
        backend_set=dict(type="str", default="ampere-llm"),
        backend_port=dict(type="int", default=80),
    ), required_if=[("state", "present", ["subnet_id", "load_balancer_id"])])
    p, o = mod.params, mod.oci
    comp = p["compartment_id"]
    if p["size"] < 1:
        mod.fail_json(msg=f"size={p['size']}: a pool serves with at least one node")

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
                         fault_domains=p["fault_domains"], backend_set=p["backend_set"])
            if mod.check_mode:
                return mod.result(True, dict(instance_pool_id=None, size=p["size"],
                                             instance_configuration_id=p["instance_configuration_id"]), after=after)
            ad = p["availability_domain"]
            if not ad:
                # Availability domains are listed at the tenancy (the root compartment).
                ad = o.list_all(o.identity.list_availability_domains, o.config.get("tenancy") or comp)[0].name
            pool = o.call(o.management.create_instance_pool, m.CreateInstancePoolDetails(
                compartment_id=comp, display_name=p["name"], instance_configuration_id=p["instance_configuration_id"],
                size=p["size"], placement_configurations=[m.CreateInstancePoolPlacementConfigurationDetails(
                    availability_domain=ad, fault_domains=p["fault_domains"], primary_subnet_id=p["subnet_id"])],
                load_balancers=[m.AttachLoadBalancerDetails(
                    load_balancer_id=p["load_balancer_id"], backend_set_name=p["backend_set"],
                    port=p["backend_port"], vnic_selection="PrimaryVnic")])).data
            wait_instances(o, pool.id, comp, p["size"])
            return mod.result(True, dict(instance_pool_id=pool.id, size=p["size"],
                                         instance_configuration_id=p["instance_configuration_id"]), after=after)

        pool = o.call(o.management.get_instance_pool, cur.id).data
        if p["instance_configuration_id"] and pool.instance_configuration_id != p["instance_configuration_id"]:
            mod.warn(f"pool {p['name']} launches from {pool.instance_configuration_id}, not the requested "
                     f"{p['instance_configuration_id']}: run playbooks/rollout.yml to move its nodes to the new image")
        changed = p["enforce_size"] and pool.size != p["size"]
        if changed and not mod.check_mode:
            o.call(o.management.update_instance_pool, pool.id, m.UpdateInstancePoolDetails(size=p["size"]))
            wait_instances(o, pool.id, comp, p["size"])
        size = p["size"] if changed else pool.size
        return mod.result(changed, dict(instance_pool_id=pool.id, size=size,
                                        instance_configuration_id=pool.instance_configuration_id),
                          before=dict(size=pool.size) if changed else {}, after=dict(size=size) if changed else {})

    mod.run(body)


if __name__ == "__main__":
    main()
