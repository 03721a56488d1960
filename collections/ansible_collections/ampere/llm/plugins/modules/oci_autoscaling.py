#!/usr/bin/python
# CPU-threshold autoscaling of the pool: between min and max nodes, one node at a time.
from __future__ import annotations

DOCUMENTATION = r"""
module: oci_autoscaling
short_description: Threshold autoscaling configuration for an ampere-llm instance pool
version_added: 0.1.0
author:
- ampere-llm maintainers (!UNKNOWN)
description:
- One threshold policy on the pool's average CPU; add a node above scale_out_cpu percent, remove one below scale_in_cpu,
  within min_nodes..max_nodes.
- LLM decoding keeps every core busy while any request streams, so CPU is a fair load signal.
- Found by display name. OCI does not let a policy's rules be edited in place, so a drifted configuration is deleted
  and made again (the pool keeps running).
- enabled=false switches autoscaling off without deleting it (oci_rollout does this itself during a roll-out).
options:
  compartment_id:
    type: str
    description: Compartment OCID.
    required: true
  name:
    type: str
    description: Display name.
    default: ampere-llm-autoscaling
  instance_pool_id:
    type: str
    description: Pool OCID; required with state=present.
  state:
    type: str
    description: present makes sure it exists; absent deletes the configuration.
    default: present
    choices:
    - present
    - absent
  min_nodes:
    type: int
    description: Fewest nodes.
    default: 2
  max_nodes:
    type: int
    description: Most nodes.
    default: 4
  initial_nodes:
    type: int
    description: Defaults to min_nodes.
  scale_out_cpu:
    type: int
    description: Average CPU percent above which a node is added.
    default: 70
  scale_in_cpu:
    type: int
    description: Average CPU percent below which a node is removed.
    default: 20
  cool_down:
    type: int
    description: Seconds between scaling steps.
    default: 300
  enabled:
    type: bool
    description: Whether autoscaling acts.
    default: true
notes:
- Supports check mode and diff mode.
extends_documentation_fragment:
- ampere.llm.oci
"""

EXAMPLES = r"""
- name: Autoscaling
  ampere.llm.oci_autoscaling:
    compartment_id: "{{ compartment_id }}"
    instance_pool_id: "{{ pool.instance_pool_id }}"
"""

RETURN = r"""
autoscaling_configuration_id:
  description: Autoscaling configuration OCID.
  type: str
  returned: success
"""

from ansible_collections.ampere.llm.plugins.module_utils.oci_common import OciModule, drift

try:
    from oci.autoscaling import models as m
except ImportError:
    pass


def summary(cfg):
    """The settings this module manages, from a configuration read back from OCI."""
    pol = cfg.policies[0]
    rules = {r.action.value: r.metric.threshold for r in pol.rules}
    return dict(min_nodes=pol.capacity.min, max_nodes=pol.capacity.max, initial_nodes=pol.capacity.initial,
                scale_out_cpu=rules[1].value if 1 in rules else None, scale_in_cpu=rules[-1].value if -1 in rules else None,
                cool_down=cfg.cool_down_in_seconds, instance_pool_id=cfg.resource.id)


def main():
    mod = OciModule(dict(
        compartment_id=dict(type="str", required=True),
        name=dict(type="str", default="ampere-llm-autoscaling"),
        instance_pool_id=dict(type="str"),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        min_nodes=dict(type="int", default=2),
        max_nodes=dict(type="int", default=4),
        initial_nodes=dict(type="int"),
        scale_out_cpu=dict(type="int", default=70),
        scale_in_cpu=dict(type="int", default=20),
        cool_down=dict(type="int", default=300),
        enabled=dict(type="bool", default=True),
    ), required_if=[("state", "present", ["instance_pool_id"])])
    p, o = mod.params, mod.oci
    initial = p["initial_nodes"] or p["min_nodes"]
    if not 1 <= p["min_nodes"] <= initial <= p["max_nodes"]:
        mod.fail_json(msg=f"need 1 <= min_nodes <= initial_nodes <= max_nodes, got {p['min_nodes']}, {initial}, {p['max_nodes']}")
    if not 0 < p["scale_in_cpu"] < p["scale_out_cpu"] < 100:
        mod.fail_json(msg=f"need 0 < scale_in_cpu < scale_out_cpu < 100, got {p['scale_in_cpu']}, {p['scale_out_cpu']}")
    want = dict(min_nodes=p["min_nodes"], max_nodes=p["max_nodes"], initial_nodes=initial,
                scale_out_cpu=p["scale_out_cpu"], scale_in_cpu=p["scale_in_cpu"], cool_down=p["cool_down"],
                instance_pool_id=p["instance_pool_id"])
    asc = o.autoscaling

    def rule(step, op, value):
        return m.CreateConditionDetails(
            display_name="scale-out" if step > 0 else "scale-in", action=m.Action(type="CHANGE_COUNT_BY", value=step),
            metric=m.Metric(metric_type="CPU_UTILIZATION", threshold=m.Threshold(operator=op, value=value)))

    def create():
        return o.call(asc.create_auto_scaling_configuration, m.CreateAutoScalingConfigurationDetails(
            compartment_id=p["compartment_id"], display_name=p["name"], cool_down_in_seconds=p["cool_down"],
            is_enabled=p["enabled"], resource=m.InstancePoolResource(id=p["instance_pool_id"]),
            policies=[m.CreateThresholdPolicyDetails(
                display_name="cpu", capacity=m.Capacity(min=p["min_nodes"], max=p["max_nodes"], initial=initial),
                rules=[rule(1, "GT", p["scale_out_cpu"]), rule(-1, "LT", p["scale_in_cpu"])])])).data

    def body():
        cur = o.find(asc.list_auto_scaling_configurations, p["compartment_id"], name=p["name"])
        if p["state"] == "absent":
            if cur and not mod.check_mode:
                o.call(asc.delete_auto_scaling_configuration, cur.id)
            return mod.result(bool(cur), dict(autoscaling_configuration_id=None),
                              before=dict(name=p["name"]) if cur else {})
        if cur is None:
            if not mod.check_mode:
                cur = create()
            return mod.result(True, dict(autoscaling_configuration_id=cur.id if cur else None), after=want)
        full = o.call(asc.get_auto_scaling_configuration, cur.id).data
        changes = drift(summary(full), want)
        enable = full.is_enabled != p["enabled"]
        if not mod.check_mode:
            if changes:
                o.call(asc.delete_auto_scaling_configuration, full.id)
                full = create()
            elif enable:
                o.call(asc.update_auto_scaling_configuration, full.id,
                       m.UpdateAutoScalingConfigurationDetails(is_enabled=p["enabled"]))
        if enable:
            changes["enabled"] = dict(before=not p["enabled"], after=p["enabled"])
        return mod.result(bool(changes), dict(autoscaling_configuration_id=full.id),
                          before={k: v["before"] for k, v in changes.items()},
                          after={k: v["after"] for k, v in changes.items()})

    mod.run(body)


if __name__ == "__main__":
    main()
