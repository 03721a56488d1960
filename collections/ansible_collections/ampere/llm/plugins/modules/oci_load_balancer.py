#!/usr/bin/python
# The pool's public load balancer on OCI: an HTTP listener whose idle timeout lets long streams live,
# and a least-connections backend set health-checked on the nodes' /readyz.
from __future__ import annotations

DOCUMENTATION = r"""
module: oci_load_balancer
short_description: Public flexible load balancer for an ampere-llm pool
version_added: 0.1.0
author:
- ampere-llm maintainers
description:
- Creates (or finds by display name) a public flexible load balancer with one HTTP listener and one backend set.
  Backends are not managed here; the instance pool registers its nodes.
- The listener's idle timeout (default 3600 s) is far above OCI's 60 s default, because a long CPU prefill sends
  no byte for a while and a reply streams for minutes.
- The health check asks GET health_path for 200; the node's /readyz is 503 while the model loads and while the node
  drains.
- Drifted listener or backend-set settings are put back (asynchronous work requests, waited for).
options:
  compartment_id:
    type: str
    description: Compartment OCID.
    required: true
  name:
    type: str
    description: Display name.
    default: ampere-llm-lb
  subnet_ids:
    type: list
    description: Subnet OCIDs (one regional subnet); required with state=present.
    elements: str
  state:
    type: str
    description: present makes sure it exists; absent deletes the load balancer.
    default: present
    choices:
    - present
    - absent
  listen_port:
    type: int
    description: Listener port.
    default: 80
  backend_port:
    type: int
    description: Nodes' port.
    default: 80
  backend_set:
    type: str
    description: Backend set name.
    default: ampere-llm
  idle_timeout:
    type: int
    description: Seconds a connection may stay silent (1-7200).
    default: 3600
  min_bandwidth_mbps:
    type: int
    description: Flexible shape minimum bandwidth.
    default: 10
  max_bandwidth_mbps:
    type: int
    description: Flexible shape maximum bandwidth.
    default: 10
  policy:
    type: str
    description: Balancing policy.
    default: LEAST_CONNECTIONS
    choices:
    - LEAST_CONNECTIONS
    - ROUND_ROBIN
    - IP_HASH
  health_path:
    type: str
    description: Health check path.
    default: /readyz
  health_interval_ms:
    type: int
    description: Health check interval.
    default: 10000
  health_timeout_ms:
    type: int
    description: Health check timeout.
    default: 3000
  health_retries:
    type: int
    description: Failed checks before a backend is marked unhealthy.
    default: 3
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
- name: Load balancer
  ampere.llm.oci_load_balancer:
    compartment_id: "{{ compartment_id }}"
    subnet_ids: ["{{ network.lb_subnet_id }}"]
  register: lb
"""

RETURN = r"""
load_balancer_id:
  description: Load balancer OCID.
  type: str
  returned: success
public_ip:
  description: The address of the pool's URL.
  type: str
  returned: success
backend_set:
  description: Backend set name.
  type: str
  returned: success
"""

from ansible_collections.ampere.llm.plugins.module_utils.oci_common import OciModule, drift, to_dict

try:
    from oci.load_balancer import models as m
except ImportError:
    pass


def main():
    mod = OciModule(dict(
        compartment_id=dict(type="str", required=True),
        name=dict(type="str", default="ampere-llm-lb"),
        subnet_ids=dict(type="list", elements="str"),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        listen_port=dict(type="int", default=80),
        backend_port=dict(type="int", default=80),
        backend_set=dict(type="str", default="ampere-llm"),
        idle_timeout=dict(type="int", default=3600),
        min_bandwidth_mbps=dict(type="int", default=10),
        max_bandwidth_mbps=dict(type="int", default=10),
        policy=dict(type="str", default="LEAST_CONNECTIONS", choices=["LEAST_CONNECTIONS", "ROUND_ROBIN", "IP_HASH"]),
        health_path=dict(type="str", default="/readyz"),
        health_interval_ms=dict(type="int", default=10000),
        health_timeout_ms=dict(type="int", default=3000),
        health_retries=dict(type="int", default=3),
    ), required_if=[("state", "present", ["subnet_ids"])])
    p, o = mod.params, mod.oci
    if not 1 <= p["idle_timeout"] <= 7200:
        mod.fail_json(msg=f"idle_timeout={p['idle_timeout']}: OCI accepts 1..7200 seconds")
    lb, bs_name, listener_name = o.lb, p["backend_set"], "http"

    health = m.HealthCheckerDetails(protocol="HTTP", url_path=p["health_path"], port=p["backend_port"], return_code=200,
                                    interval_in_millis=p["health_interval_ms"], timeout_in_millis=p["health_timeout_ms"],
                                    retries=p["health_retries"])
    listener = m.ListenerDetails(default_backend_set_name=bs_name, port=p["listen_port"], protocol="HTTP",
                                 connection_configuration=m.ConnectionConfiguration(idle_timeout=p["idle_timeout"]))
    want_listener = dict(port=p["listen_port"], protocol="HTTP", default_backend_set_name=bs_name,
                         idle_timeout=p["idle_timeout"])
    want_set = dict(policy=p["policy"], url_path=p["health_path"], port=p["backend_port"], return_code=200,
                    interval_in_millis=p["health_interval_ms"], timeout_in_millis=p["health_timeout_ms"],
                    retries=p["health_retries"], protocol="HTTP")

    def out(cur):
        ips = [a.ip_address for a in (cur.ip_addresses or []) if a.is_public] if cur else []
        return dict(load_balancer_id=cur.id if cur else None, public_ip=ips[0] if ips else None, backend_set=bs_name)

    def body():
        cur = o.find(lb.list_load_balancers, p["compartment_id"], name=p["name"])
        if p["state"] == "absent":
            if cur and not mod.check_mode:
                o.wait_lb_work(o.call(lb.delete_load_balancer, cur.id), "delete load balancer")
            return mod.result(bool(cur), out(None), before=dict(name=p["name"]) if cur else {})
        if cur is None:
            after = dict(name=p["name"], listener=want_listener, backend_set=want_set)
            if mod.check_mode:
                return mod.result(True, out(None), after=after)
            resp = o.call(lb.create_load_balancer, m.CreateLoadBalancerDetails(
                compartment_id=p["compartment_id"], display_name=p["name"], shape_name="flexible",
                shape_details=m.ShapeDetails(minimum_bandwidth_in_mbps=p["min_bandwidth_mbps"],
                                             maximum_bandwidth_in_mbps=p["max_bandwidth_mbps"]),
                subnet_ids=p["subnet_ids"], is_private=False, listeners={listener_name: listener},
                backend_sets={bs_name: m.BackendSetDetails(policy=p["policy"], backends=[], health_checker=health)}))
            wr = o.wait_lb_work(resp, "create load balancer")
            cur = o.wait(lb.get_load_balancer, wr.load_balancer_id, {"ACTIVE"}, "load balancer")
            return mod.result(True, out(cur), after=after)

        changes = {}
        li = (cur.listeners or {}).get(listener_name)
        have_listener = dict(port=li.port, protocol=li.protocol, default_backend_set_name=li.default_backend_set_name,
                             idle_timeout=li.connection_configuration.idle_timeout if li.connection_configuration else None) if li else {}
        bs = (cur.backend_sets or {}).get(bs_name)
        if bs is None:
            mod.fail_json(msg=f"load balancer {p['name']} exists without backend set {bs_name}: it was made by "
                              f"something else; pick another name or add the backend set")
        hc = to_dict(bs.health_checker)
        have_set = dict(policy=bs.policy, **{k: hc.get(k) for k in want_set if k != "policy"})
        if d := drift(have_listener, want_listener):
            changes["listener"] = d
        if d := drift(have_set, want_set):
            changes["backend_set"] = d
        if changes and not mod.check_mode:
            if "listener" in changes:
                o.wait_lb_work(o.call(lb.update_listener, m.UpdateListenerDetails(
                    default_backend_set_name=bs_name, port=p["listen_port"], protocol="HTTP",
                    connection_configuration=listener.connection_configuration), cur.id, listener_name), "update listener")
            if "backend_set" in changes:
                backends = [m.BackendDetails(ip_address=b.ip_address, port=b.port, weight=b.weight, backup=b.backup,
                                             drain=b.drain, offline=b.offline) for b in bs.backends or []]
                o.wait_lb_work(o.call(lb.update_backend_set, m.UpdateBackendSetDetails(
                    policy=p["policy"], backends=backends, health_checker=health), cur.id, bs_name), "update backend set")
        return mod.result(bool(changes), out(cur), before={k: {kk: v["before"] for kk, v in c.items()} for k, c in changes.items()},
                          after={k: {kk: v["after"] for kk, v in c.items()} for k, c in changes.items()})

    mod.run(body)


if __name__ == "__main__":
    main()
