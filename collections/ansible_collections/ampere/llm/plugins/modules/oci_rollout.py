#!/usr/bin/python
# Roll an OCI instance pool onto a new instance configuration without dropping requests.
from __future__ import annotations

DOCUMENTATION = r"""
module: oci_rollout
short_description: Replace an instance pool's nodes with nodes of a new instance configuration, safely
version_added: 0.1.0
author:
- ampere-llm maintainers (!UNKNOWN)
description:
- OCI does not replace a pool's running instances when its configuration changes. This module does, with the collection's
  one roll-out algorithm (module_utils/rollout.py).
- Grow the pool with nodes of the new configuration, wait until the load balancer reports them healthy, drain the
  old backends, wait drain_timeout for their streams to end, detach them with auto-terminate (the pool shrinks back
  to its size), never falling below min_healthy.
- A node is old when it was launched from another instance configuration than instance_configuration_id, so a new
  shape, OCPU count, memory size, SSH key or user data rolls the pool just as a new image does.
- Health is each backend's own status at the balancer (OK and not drained); a backend with no health data yet is not
  healthy.
- If anything fails after the first change (the new nodes are not healthy within health_timeout, a launch fails in its
  work request, e.g. "Out of host capacity.", an API error that retries did not cure), the roll is undone - new nodes
  removed, drained old nodes back in service, the previous configuration and size restored - and the task fails
  saying so; the old nodes kept serving.
- Autoscaling (autoscaling_configuration_id) is paused during the roll and put back to the state it had before (left
  off if it was off). Nodes already on the new configuration are left alone, so a re-run after success changes
  nothing.
- Check mode reports the plan (which nodes, in which batches) and touches nothing.
options:
  instance_pool_id:
    type: str
    description: Pool OCID.
    required: true
  instance_configuration_id:
    type: str
    description: The new configuration.
    required: true
  load_balancer_id:
    type: str
    description: Load balancer OCID.
    required: true
  backend_set:
    type: str
    description: Backend set name.
    default: ampere-llm
  backend_port:
    type: int
    description: Nodes' port.
    default: 80
  batch_size:
    type: int
    description: Nodes replaced per step; 0 means all at once (surge to twice the size).
    default: 0
  min_healthy:
    type: int
    description: Defaults to the number of nodes healthy when the roll starts.
  health_timeout:
    type: int
    description: Seconds new nodes have to become healthy at the balancer.
    default: 900
  drain_timeout:
    type: int
    description: Seconds a drained node keeps running; OCI cannot tell per-backend connections, so this is waited
      in full.
    default: 300
  autoscaling_configuration_id:
    type: str
    description: Autoscaling to pause during the roll.
notes:
- Supports check mode and diff mode.
extends_documentation_fragment:
- ampere.llm.oci
"""

EXAMPLES = r"""
- name: Roll out
  ampere.llm.oci_rollout:
    compartment_id: "{{ compartment_id }}"
    instance_pool_id: "{{ pool.instance_pool_id }}"
    instance_configuration_id: "{{ config.instance_configuration_id }}"
    load_balancer_id: "{{ lb.load_balancer_id }}"
"""

RETURN = r"""
image_id:
  description: The new configuration's image.
  type: str
  returned: success
instance_configuration_id:
  description: The configuration every node now runs (in check mode, would run).
  type: str
  returned: success
replaced:
  description: Instance OCIDs of the old nodes (planned in check mode).
  type: list
  returned: success
batches:
  description: Old nodes per step.
  type: list
  returned: success
events:
  description: grow / healthy / drain / remove / rollback, in order, with times.
  type: list
  returned: success
"""

from ansible_collections.ampere.llm.plugins.module_utils.oci_common import OciError, OciModule, autoscaling_models
from ansible_collections.ampere.llm.plugins.module_utils.oci_provider import OciPoolProvider
from ansible_collections.ampere.llm.plugins.module_utils.rollout import Rollout, RolloutFailed, plan


def main():
    mod = OciModule(dict(
        instance_pool_id=dict(type="str", required=True),
        instance_configuration_id=dict(type="str", required=True),
        load_balancer_id=dict(type="str", required=True),
        backend_set=dict(type="str", default="ampere-llm"),
        backend_port=dict(type="int", default=80),
        batch_size=dict(type="int", default=0),
        min_healthy=dict(type="int"),
        health_timeout=dict(type="int", default=900),
        drain_timeout=dict(type="int", default=300),
        autoscaling_configuration_id=dict(type="str"),
    ))
    p, o = mod.params, mod.oci

    def image_of(config_id):
        cfg = o.call(o.management.get_instance_configuration, config_id).data
        return cfg.instance_details.launch_details.source_details.image_id

    asc_id = p["autoscaling_configuration_id"]

    def set_autoscaling(enabled):
        o.call(o.autoscaling.update_auto_scaling_configuration, asc_id,
               autoscaling_models.UpdateAutoScalingConfigurationDetails(is_enabled=enabled))

    def body():
        pool = o.call(o.management.get_instance_pool, p["instance_pool_id"]).data
        target = p["instance_configuration_id"]
        summary = dict(image_id=image_of(target), instance_configuration_id=target)
        provider = OciPoolProvider(o, p["compartment_id"], pool.id, p["load_balancer_id"], p["backend_set"],
                                   p["backend_port"])
        try:
            todo = plan(provider.nodes(), provider.healthy(), target, p["batch_size"], p["min_healthy"])
        except ValueError as e:
            raise OciError(str(e)) from None
        summary.update(replaced=[n.id for n in todo.old], batches=[[n.id for n in b] for b in todo.batches],
                       min_healthy=todo.min_healthy)
        if not todo.old or mod.check_mode:
            return mod.result(bool(todo.old), dict(summary, events=[]),
                              before=dict(nodes=summary["replaced"]), after=dict(instance_configuration_id=target))
        roll = Rollout(provider, health_timeout=p["health_timeout"], drain_timeout=p["drain_timeout"], poll=o.poll)
        # Put autoscaling back as it WAS: an operator who had it off keeps it off.
        was_enabled = asc_id and o.call(o.autoscaling.get_auto_scaling_configuration, asc_id).data.is_enabled
        if was_enabled:
            set_autoscaling(False)
        try:
            events = roll.run(todo)
        except RolloutFailed as e:
            mod.fail_json(msg=str(e), events=e.events, **{k: v for k, v in summary.items() if k != "replaced"})
        finally:
            if was_enabled:
                set_autoscaling(True)
        return mod.result(True, dict(summary, events=events), before=dict(nodes=summary["replaced"]),
                          after=dict(instance_configuration_id=target))

    mod.run(body)


if __name__ == "__main__":
    main()
