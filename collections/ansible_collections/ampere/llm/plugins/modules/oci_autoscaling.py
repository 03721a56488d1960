#!/usr/bin/python
# Threshold autoscaling of the pool, on demand (the nodes' own metrics, by MQL) or on CPU: between min and max
# nodes, one node at a time.
from __future__ import annotations

DOCUMENTATION = r"""
module: oci_autoscaling
short_description: Threshold autoscaling configuration for an ampere-llm instance pool
version_added: 0.1.0
author:
- ampere-llm maintainers (!UNKNOWN)
description:
- One threshold policy with two rules, within min_nodes..max_nodes, one node per step.
- C(metric=demand) (CUSTOM_QUERY) evaluates two Monitoring Query Language (MQL) triggers over the metrics the nodes post
  (the ampere.llm.monitoring role, namespace C(ampere_llm)), e.g. add a node when requests wait (mean queue depth
  across the pool above a threshold), remove one when slots sit idle (mean slot saturation below one). Each query is
  checked here before any call, and OCI's own refusal (400 InvalidParameter) is reported as is.
- C(metric=cpu) (COMPUTE_AGENT) uses the pool's average CPU (scale_out_cpu, scale_in_cpu). LLM decoding keeps every
  core busy while even one request streams, so CPU cannot tell one user from a queue of twenty; it needs no metrics
  from the nodes.
- Found by display name. OCI does not let a policy's rules be edited in place, so a drifted configuration is deleted
  and made again (the pool keeps running).
- enabled=false switches autoscaling off without deleting it (oci_rollout does this itself during a roll-out).
options:
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
  metric:
    type: str
    description: What the rules read, demand (CUSTOM_QUERY over the nodes' metrics) or cpu (COMPUTE_AGENT).
    default: cpu
    choices:
    - cpu
    - demand
  scale_out_cpu:
    type: int
    description: With metric=cpu, the average CPU percent above which a node is added.
    default: 70
  scale_in_cpu:
    type: int
    description: With metric=cpu, the average CPU percent below which a node is removed.
    default: 20
  namespace:
    type: str
    description: With metric=demand, the Monitoring namespace the queries read (the nodes' monitoring_namespace).
    default: ampere_llm
  scale_out_query:
    type: str
    description:
    - With metric=demand (required), the MQL trigger that adds a node when true, e.g.
      C(queue_depth[1m]{pool = "ampere-llm-pool"}.grouping().mean() > 0.5).
  scale_in_query:
    type: str
    description:
    - With metric=demand (required), the MQL trigger that removes a node when true, e.g.
      C(slot_saturation[1m]{pool = "ampere-llm-pool"}.grouping().mean() < 0.25).
  pending_duration:
    type: str
    description: With metric=demand, how long a trigger must hold before it acts (ISO 8601, PT3M to PT1H).
    default: PT3M
  cool_down:
    type: int
    description: Seconds between scaling steps (OCI's minimum is 300).
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
- name: Autoscaling on demand (the nodes post ampere_llm metrics)
  ampere.llm.oci_autoscaling:
    compartment_id: "{{ compartment_id }}"
    instance_pool_id: "{{ pool.instance_pool_id }}"
    metric: demand
    scale_out_query: 'queue_depth[1m]{pool = "ampere-llm-pool"}.grouping().mean() > 0.5'
    scale_in_query: 'slot_saturation[1m]{pool = "ampere-llm-pool"}.grouping().mean() < 0.25'

- name: Autoscaling on CPU
  ampere.llm.oci_autoscaling:
    compartment_id: "{{ compartment_id }}"
    instance_pool_id: "{{ pool.instance_pool_id }}"
    metric: cpu
"""

RETURN = r"""
autoscaling_configuration_id:
  description: Autoscaling configuration OCID.
  type: str
  returned: success
"""

import re

from ansible_collections.ampere.llm.plugins.module_utils.mql import namespace_error, query_error
from ansible_collections.ampere.llm.plugins.module_utils.oci_common import STATE, OciModule, drift
from ansible_collections.ampere.llm.plugins.module_utils.oci_common import autoscaling_models as m


def summary(cfg):
    """The settings this module manages, from a configuration read back from OCI."""
    pol = cfg.policies[0]
    rules = {r.action.value: r.metric for r in pol.rules}
    out = dict(min_nodes=pol.capacity.min, max_nodes=pol.capacity.max, initial_nodes=pol.capacity.initial,
               cool_down=cfg.cool_down_in_seconds, instance_pool_id=cfg.resource.id)
    if all(getattr(x, "metric_source", None) == "CUSTOM_QUERY" for x in rules.values()):
        out.update(metric="demand", namespace=rules[1].namespace if 1 in rules else None,
                   pending_duration=rules[1].pending_duration if 1 in rules else None,
                   scale_out_query=rules[1].query if 1 in rules else None,
                   scale_in_query=rules[-1].query if -1 in rules else None)
    else:
        out.update(metric="cpu", scale_out_cpu=rules[1].threshold.value if 1 in rules else None,
                   scale_in_cpu=rules[-1].threshold.value if -1 in rules else None)
    return out


def main():
    mod = OciModule(dict(
        name=dict(type="str", default="ampere-llm-autoscaling"),
        instance_pool_id=dict(type="str"),
        state=STATE,
        min_nodes=dict(type="int", default=2),
        max_nodes=dict(type="int", default=4),
        initial_nodes=dict(type="int"),
        metric=dict(type="str", default="cpu", choices=["cpu", "demand"]),
        scale_out_cpu=dict(type="int", default=70),
        scale_in_cpu=dict(type="int", default=20),
        namespace=dict(type="str", default="ampere_llm"),
        scale_out_query=dict(type="str"),
        scale_in_query=dict(type="str"),
        pending_duration=dict(type="str", default="PT3M"),
        cool_down=dict(type="int", default=300),
        enabled=dict(type="bool", default=True),
    ), required_if=[("state", "present", ["instance_pool_id"]),
                    ("metric", "demand", ["scale_out_query", "scale_in_query"])])
    p, o = mod.params, mod.oci
    initial = p["initial_nodes"] or p["min_nodes"]
    if not 1 <= p["min_nodes"] <= initial <= p["max_nodes"]:
        mod.fail_json(msg=f"need 1 <= min_nodes <= initial_nodes <= max_nodes, got {p['min_nodes']}, {initial}, {p['max_nodes']}")
    if p["cool_down"] < 300:
        mod.fail_json(msg=f"cool_down must be at least 300 seconds (OCI's minimum), got {p['cool_down']}")
    demand = p["metric"] == "demand"
    want = dict(min_nodes=p["min_nodes"], max_nodes=p["max_nodes"], initial_nodes=initial, cool_down=p["cool_down"],
                instance_pool_id=p["instance_pool_id"], metric=p["metric"])
    if demand:
        pending = re.match(r"^PT(\d+)M$|^PT1H$", p["pending_duration"] or "")
        errors = [e for e in (namespace_error(p["namespace"]), query_error(p["scale_out_query"]),
                              query_error(p["scale_in_query"])) if e]
        if not pending or (pending.group(1) and not 3 <= int(pending.group(1)) <= 60):
            errors.append(f"pending_duration must be PT3M to PT60M or PT1H, got {p['pending_duration']!r}")
        if errors:
            mod.fail_json(msg="; ".join(errors) + ". Nothing was changed.")
        want.update(namespace=p["namespace"], pending_duration=p["pending_duration"],
                    scale_out_query=p["scale_out_query"], scale_in_query=p["scale_in_query"])
    else:
        if not 0 < p["scale_in_cpu"] < p["scale_out_cpu"] < 100:
            mod.fail_json(msg=f"need 0 < scale_in_cpu < scale_out_cpu < 100, got {p['scale_in_cpu']}, {p['scale_out_cpu']}")
        want.update(scale_out_cpu=p["scale_out_cpu"], scale_in_cpu=p["scale_in_cpu"])
    asc = o.autoscaling

    def rule(step, op, value, query):
        if demand:
            metric = m.CustomMetric(metric_source="CUSTOM_QUERY", namespace=p["namespace"], query=query,
                                    pending_duration=p["pending_duration"])
        else:
            metric = m.Metric(metric_source="COMPUTE_AGENT", metric_type="CPU_UTILIZATION",
                              threshold=m.Threshold(operator=op, value=value))
        return m.CreateConditionDetails(display_name="scale-out" if step > 0 else "scale-in",
                                        action=m.Action(type="CHANGE_COUNT_BY", value=step), metric=metric)

    def create():
        return o.call(asc.create_auto_scaling_configuration, m.CreateAutoScalingConfigurationDetails(
            compartment_id=p["compartment_id"], display_name=p["name"], cool_down_in_seconds=p["cool_down"],
            is_enabled=p["enabled"], resource=m.InstancePoolResource(id=p["instance_pool_id"]),
            policies=[m.CreateThresholdPolicyDetails(
                display_name=p["metric"], capacity=m.Capacity(min=p["min_nodes"], max=p["max_nodes"], initial=initial),
                rules=[rule(1, "GT", p["scale_out_cpu"], p["scale_out_query"]),
                       rule(-1, "LT", p["scale_in_cpu"], p["scale_in_query"])])])).data

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
