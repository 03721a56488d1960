#!/usr/bin/python
# Before pool.yml creates anything: can this principal use every API the pool needs, is the shape offered in the
# availability domain, and does the service limit leave room for the pool and a roll-out?
from __future__ import annotations

DOCUMENTATION = r"""
module: oci_preflight
short_description: Check IAM rights, availability domain, shape and limits before an ampere-llm pool is made
version_added: 0.2.0
author:
- ampere-llm maintainers (!UNKNOWN)
description:
- Reads, once each, every OCI API that pool.yml and rollout.yml will change (networking, compute images and shapes,
  instance configurations and pools, compute work requests, load balancers, autoscaling). OCI answers 404
  NotAuthorizedOrNotFound when no policy grants the principal a resource family in the compartment; this module
  collects every such refusal and fails with the policy statements to add, before anything is created.
- Checks that the availability domain exists and offers the shape (list_shapes); without availability_domain it picks
  the first one that does and returns it.
- Reads the shape's core limit (Limits service, resource availability) where the principal may. It fails when the
  pool at min_nodes would not fit and warns when the pool at max_nodes (a roll-out doubles it) would not; the cores
  of the pool's own running nodes (pool_name) count as its own. If the limit cannot be read it only says so.
- 'Limits of the approach: a read proves the principal holds at least inspect/read on the family, not manage. A policy
  that grants only read or use passes here and still fails at the first create. pool.yml therefore creates the free
  resources (network, instance configuration) before the billable ones (load balancer, instances). OCI has no API that
  evaluates a policy for a principal without calling the operation itself.'
- With metrics_namespace (demand autoscaling), also the nodes' side, which OCI would never report to pool.yml. The
  compartment's and the tenancy's policies must hold a statement letting a dynamic group use (or manage) metrics
  in this compartment or the tenancy; otherwise every node's post is refused and the pool never scales on demand.
- Changes nothing; check mode runs the same reads.
options:
  shape:
    type: str
    description: The nodes' shape.
    default: VM.Standard.A2.Flex
  ocpus:
    type: float
    description: OCPUs per node (Flex shapes).
    default: 2
  availability_domain:
    type: str
    description: Availability domain name; empty picks the first one offering the shape.
  image_id:
    type: str
    description: The image the pool will boot; checked readable.
  min_nodes:
    type: int
    description: Nodes the pool starts with; the limit must leave room for them.
    default: 2
  max_nodes:
    type: int
    description: The most nodes the pool may run at once (during a roll-out, up to twice the autoscaling maximum); a
      warning when the limit leaves no room for them.
    default: 8
  pool_name:
    type: str
    description: Display name of the instance pool, if it exists already; its nodes' cores are its own.
  cores_per_ocpu:
    type: int
    description: Cores the limit counts per OCPU (2 on Ampere A2, 1 on A1).
    default: 2
  metric_queries:
    type: list
    elements: str
    description:
    - MQL triggers of the demand autoscaling rules; each must have the shape OCI accepts
      (C(metric[1m]{dim = "value"}.grouping().mean() > 0.5)), checked before any call.
  metrics_namespace:
    type: str
    description:
    - The namespace the nodes post to (demand autoscaling). Checks the name, that this principal may read metrics in
      the compartment, and that a policy lets a dynamic group C(use metrics) there (the nodes' right to post); a
      policy that cannot be read is a warning.
notes:
- Supports check mode.
extends_documentation_fragment:
- ampere.llm.oci
"""

EXAMPLES = r"""
- name: Rights, shape and limits before anything is created
  ampere.llm.oci_preflight:
    compartment_id: "{{ compartment_id }}"
    shape: VM.Standard.A2.Flex
    image_id: "{{ image_id }}"
  register: preflight
"""

RETURN = r"""
availability_domain:
  description: The availability domain to use (given, or the first offering the shape).
  type: str
  returned: success
checked:
  description: The APIs read, each with ok or the refusal.
  type: dict
  returned: always
limit:
  description: The shape's core limit as read (name, available, needed), or why it could not be read.
  type: dict
  returned: success
"""

import re

from ansible_collections.ampere.llm.plugins.module_utils.mql import namespace_error, query_error
from ansible_collections.ampere.llm.plugins.module_utils.oci_common import (
    OciError,
    OciModule,
    ServiceError,
    explain,
    oci,
)

# What to add to the policy when a read of a family is refused (docs/oci.md has the whole policy).
STATEMENT = {
    "virtual-network-family": "Allow group <your group> to manage virtual-network-family in compartment <name>",
    "instance-family": "Allow group <your group> to manage instance-family in compartment <name>",
    "compute-management-family": "Allow group <your group> to manage compute-management-family in compartment <name>",
    "load-balancers": "Allow group <your group> to manage load-balancers in compartment <name>",
    "auto-scaling-configurations": "Allow group <your group> to manage auto-scaling-configurations in compartment <name>",
    "metrics": "Allow group <your group> to read metrics in compartment <name>",
}
# A statement that lets the pool's nodes (a dynamic group) post metrics where `target` names the compartment.
NODE_GRANT = re.compile(r"^\s*allow\s+dynamic-group\s+\S+\s+to\s+(?:use|manage)\s+(?:metrics|all-resources)\s+in\s+"
                        r"(tenancy|compartment\s+(?:id\s+)?(\S+))", re.I)


def grants_nodes_metrics(statements, compartment_id, compartment_name):
    """True when one statement lets a dynamic group use metrics in the compartment (by name, path or OCID)
    or in the whole tenancy."""
    for s in statements:
        m = NODE_GRANT.match(s)
        if m and (m.group(1).lower() == "tenancy"
                  or m.group(2) in (compartment_id, compartment_name)
                  or m.group(2).split(":")[-1] == compartment_name):
            return True
    return False


def main():
    mod = OciModule(dict(
        shape=dict(type="str", default="VM.Standard.A2.Flex"),
        ocpus=dict(type="float", default=2),
        availability_domain=dict(type="str"),
        image_id=dict(type="str"),
        min_nodes=dict(type="int", default=2),
        max_nodes=dict(type="int", default=8),
        pool_name=dict(type="str"),
        cores_per_ocpu=dict(type="int", default=2),
        metric_queries=dict(type="list", elements="str"),
        metrics_namespace=dict(type="str"),
    ))
    p, o = mod.params, mod.oci
    comp = p["compartment_id"]
    checked, refused = {}, {}
    # Demand autoscaling's queries and namespace: OCI would refuse them only at the autoscaling
    # configuration, the last and after the billable parts.
    errors = [e for e in [query_error(q) for q in p["metric_queries"] or []]
              + [namespace_error(p["metrics_namespace"]) if p["metrics_namespace"] is not None else None] if e]
    if errors:
        mod.fail_json(msg="; ".join(errors) + ". Nothing was created: fix scale_out_query / scale_in_query / "
                          "node_metrics_namespace (docs/oci.md, Autoscaling).")

    def read(family, what, fn, *args, **kw):
        try:
            fn(*args, **kw)
            checked[what] = "ok"
            return True
        except ServiceError as e:
            if e.status == 404:
                checked[what] = f"{e.status} {e.code}"
                refused.setdefault(family, []).append(what)
                return False
            raise OciError(explain(e, what)) from None

    def body():
        ads = [a.name for a in o.list_all(o.identity.list_availability_domains, o.config.get("tenancy") or comp)]
        read("virtual-network-family", "list VCNs", o.network.list_vcns, comp, limit=1)
        read("instance-family", "list shapes", o.compute.list_shapes, comp, limit=1)
        if p["image_id"]:
            read("instance-family", f"read image {p['image_id']}", o.compute.get_image, p["image_id"])
        read("compute-management-family", "list instance configurations",
             o.management.list_instance_configurations, comp, limit=1)
        read("compute-management-family", "list instance pools", o.management.list_instance_pools, comp, limit=1)
        read("compute-management-family", "list compute work requests",
             o.work_requests.list_work_requests, comp, limit=1)
        read("load-balancers", "list load balancers", o.lb.list_load_balancers, comp, limit=1)
        read("auto-scaling-configurations", "list autoscaling configurations",
             o.autoscaling.list_auto_scaling_configurations, comp, limit=1)
        if p["metrics_namespace"]:
            monitoring = o.client(oci.monitoring.MonitoringClient)
            read("metrics", f"list metrics in {p['metrics_namespace']}", monitoring.list_metrics, comp,
                 oci.monitoring.models.ListMetricsDetails(namespace=p["metrics_namespace"]), limit=1)
        if refused:
            mod.fail_json(
                msg="OCI refused (404 NotAuthorizedOrNotFound) "
                    + "; ".join(f"{', '.join(w)} [{f}]" for f, w in refused.items())
                    + ". Nothing was created. Add to your group's policy (docs/oci.md has the whole policy): "
                    + " | ".join(STATEMENT[f] for f in refused),
                checked=checked)

        ad = p["availability_domain"]
        if ad and ad not in ads:
            raise OciError(f"availability_domain {ad!r} is not one of this region's: {', '.join(ads)}")
        offered = {a: {s.shape for s in o.list_all(o.compute.list_shapes, comp, availability_domain=a)}
                   for a in ([ad] if ad else ads)}
        where = [a for a, shapes in offered.items() if p["shape"] in shapes]
        if not where:
            others = [a for a in ads if a != ad and p["shape"] in {
                s.shape for s in o.list_all(o.compute.list_shapes, comp, availability_domain=a)}] if ad else []
            raise OciError(f"shape {p['shape']} is not offered in {ad or 'any availability domain of this region'}"
                           + (f"; it is in {', '.join(others)}: set availability_domain" if others else
                              ": choose another shape or region"))
        ad = where[0]

        limit = {}
        m = re.match(r"^VM\.Standard\.(\w+)\.Flex$", p["shape"])
        if m:
            name = f"standard-{m.group(1).lower()}-core-count"
            per_node = p["ocpus"] * p["cores_per_ocpu"]
            need_min, need_max = int(p["min_nodes"] * per_node), int(p["max_nodes"] * per_node)
            pool = o.find(o.management.list_instance_pools, comp, name=p["pool_name"]) if p["pool_name"] else None
            own = int(len([i for i in o.list_all(o.management.list_instance_pool_instances, comp, pool.id)
                           if i.state.upper() not in ("TERMINATING", "TERMINATED")]) * per_node) if pool else 0
            limits = o.client(oci.limits.LimitsClient)
            try:
                got = limits.get_resource_availability("compute", name, o.config.get("tenancy") or comp,
                                                       availability_domain=ad).data
                limit = dict(name=name, available=got.available, used=got.used, own=own,
                             needed=need_min, needed_in_rollout=need_max)
            except ServiceError as e:
                limit = dict(name=name, needed=need_min, needed_in_rollout=need_max, unread=f"{e.status} {e.code}")
                mod.warn(f"could not read the {name} limit ({e.status} {e.code}): check Governance > Limits yourself; "
                         f"the pool needs {need_min} cores in {ad}, {need_max} at its largest (a roll-out)")
            if limit.get("available") is not None:
                room = limit["available"] + own
                if room < need_min:
                    raise OciError(f"service limit {name} in {ad} leaves {room} cores for the pool, which needs "
                                   f"{need_min} ({p['min_nodes']} nodes): ask for a limit increase (Governance > "
                                   f"Limits, Quotas and Usage), another availability_domain, or fewer nodes/OCPUs")
                if room < need_max:
                    mod.warn(f"service limit {name} in {ad} leaves {room} cores: the pool at {p['max_nodes']} nodes "
                             f"(autoscaling's maximum doubled by a roll-out) needs {need_max}; a roll-out may fail "
                             f"with a limit error (and roll back)")
        if p["metrics_namespace"]:
            nodes_policy(comp)
        return mod.result(False, dict(availability_domain=ad, checked=checked, limit=limit))

    def nodes_policy(comp):
        """The nodes' right to post: a dynamic-group statement with use metrics, in this compartment's or the
        tenancy's policies (where docs/oci.md puts it). Unreadable policies are only a warning."""
        tenancy = o.config.get("tenancy") or comp
        try:
            name = "tenancy" if comp.startswith("ocid1.tenancy.") else o.identity.get_compartment(comp).data.name
            statements = [s for c in dict.fromkeys([comp, tenancy])
                          for pol in oci.pagination.list_call_get_all_results(o.identity.list_policies, c).data
                          for s in pol.statements]
        except ServiceError as e:
            checked["policies granting the nodes use metrics"] = f"{e.status} {e.code}"
            mod.warn(f"could not read the IAM policies ({e.status} {e.code}) to check that the nodes may post "
                     f"metrics: make sure a dynamic group of the pool's instances has `use metrics` in the "
                     f"compartment (docs/oci.md), or demand autoscaling never gets data")
            return
        if not grants_nodes_metrics(statements, comp, name):
            raise OciError(
                "no policy lets the pool's nodes post their metrics (demand autoscaling would never get data). "
                "Nothing was created. Add a dynamic group of the pool's instances, e.g. ampere-llm-nodes with "
                f"ALL {{instance.compartment.id = '{comp}'}}, and the statement: Allow dynamic-group "
                f"ampere-llm-nodes to use metrics in compartment {name} (docs/oci.md); or set "
                f"autoscaling_metric=cpu")
        checked["policies granting the nodes use metrics"] = "ok"

    mod.run(body)


if __name__ == "__main__":
    main()
