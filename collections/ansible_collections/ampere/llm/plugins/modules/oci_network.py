#!/usr/bin/python
# The pool's network on OCI: VCN, internet gateway, route table, two public subnets, and security
# lists that let only the load balancer reach the nodes' port 80 and only an admin CIDR reach SSH.
from __future__ import annotations

DOCUMENTATION = r"""
module: oci_network
short_description: The VCN, subnets, gateway, routes and security lists of an ampere-llm pool
version_added: 0.1.0
author:
- ampere-llm maintainers (!UNKNOWN)
description:
- Creates (or finds by display name) a VCN with an internet gateway, a route table to it, a public subnet for the
  load balancer and a public subnet for the nodes.
- The balancer's security list admits listen_port from anywhere; the nodes' admits listen_port only from the balancer's
  subnet, and SSH only from admin_cidr.
- Idempotent by display name (<name>-vcn, <name>-lb, <name>-nodes, ...); security rules that drifted are put back.
options:
  name:
    type: str
    description: Prefix of every resource's display name.
    default: ampere-llm
  vcn_cidr:
    type: str
    description: VCN CIDR.
    default: 10.0.0.0/16
  lb_subnet_cidr:
    type: str
    description: Load balancer subnet CIDR.
    default: 10.0.0.0/24
  node_subnet_cidr:
    type: str
    description: Node subnet CIDR.
    default: 10.0.1.0/24
  admin_cidr:
    type: str
    description: CIDR allowed to SSH to the nodes; empty means no SSH.
    default: ''
  listen_port:
    type: int
    description: The port the balancer listens on and the nodes serve.
    default: 80
  https_port:
    type: int
    description: The balancer's HTTPS port, admitted from anywhere like listen_port; 0 when there is no HTTPS listener.
    default: 0
  state:
    type: str
    description: present makes sure it exists; absent deletes the subnets, security lists, route table, gateway
      and VCN (in that order).
    default: present
    choices:
    - present
    - absent
notes:
- Supports check mode and diff mode.
extends_documentation_fragment:
- ampere.llm.oci
"""

EXAMPLES = r"""
- name: Network
  ampere.llm.oci_network:
    compartment_id: "{{ compartment_id }}"
    admin_cidr: 203.0.113.7/32
  register: network
"""

RETURN = r"""
vcn_id:
  description: VCN OCID (null in check mode before creation).
  type: str
  returned: success
lb_subnet_id:
  description: Balancer subnet OCID.
  type: str
  returned: success
node_subnet_id:
  description: Node subnet OCID.
  type: str
  returned: success
changes:
  description: What was (or would be) created or changed.
  type: dict
  returned: success
"""

from ansible_collections.ampere.llm.plugins.module_utils.oci_common import STATE, OciModule
from ansible_collections.ampere.llm.plugins.module_utils.oci_common import core_models as m


def rule_key(rule, peer):
    """A security rule as a comparable tuple: protocol, peer CIDR, destination ports or ICMP type/code."""
    tcp, icmp = rule.tcp_options, rule.icmp_options
    rng = (tcp.destination_port_range.min, tcp.destination_port_range.max) if tcp and tcp.destination_port_range else None
    return (rule.protocol, getattr(rule, peer), rng or ((icmp.type, icmp.code) if icmp else None))


def path_mtu():
    """ICMP "fragmentation needed" from anywhere, as OCI's default security list has: without it, path
    MTU discovery fails and large replies stall on some client networks."""
    return m.IngressSecurityRule(protocol="1", source="0.0.0.0/0", source_type="CIDR_BLOCK",
                                 icmp_options=m.IcmpOptions(type=3, code=4))


def tcp_in(source, port):
    return m.IngressSecurityRule(protocol="6", source=source, source_type="CIDR_BLOCK",
                                 tcp_options=m.TcpOptions(destination_port_range=m.PortRange(min=port, max=port)))


def main():
    mod = OciModule(dict(
        name=dict(type="str", default="ampere-llm"),
        vcn_cidr=dict(type="str", default="10.0.0.0/16"),
        lb_subnet_cidr=dict(type="str", default="10.0.0.0/24"),
        node_subnet_cidr=dict(type="str", default="10.0.1.0/24"),
        admin_cidr=dict(type="str", default=""),
        listen_port=dict(type="int", default=80),
        https_port=dict(type="int", default=0),
        state=STATE,
    ))
    p, o = mod.params, mod.oci
    net, comp, name = o.network, p["compartment_id"], p["name"]
    changes = {}

    def ensure(kind, display, list_fn, create_fn, details, get_fn, list_kw=None):
        """Find `display` or create it from `details`; in check mode, just note the creation."""
        cur = o.find(list_fn, comp, name=display, **(list_kw or {})) if list_kw is not None or kind == "vcn" else None
        if cur is not None:
            return cur
        changes[display] = "create"
        if mod.check_mode:
            return None
        created = o.call(create_fn, details).data
        return o.wait(get_fn, created.id, {"AVAILABLE"}, kind)

    def ensure_rules(display, current, ingress, egress, update_fn, details_cls, kind):
        """Put security rules back to the desired set when they drifted (order does not matter)."""
        if current is None:
            return
        want = ({rule_key(r, "source") for r in ingress}, {rule_key(r, "destination") for r in egress})
        have = ({rule_key(r, "source") for r in current.ingress_security_rules or []},
                {rule_key(r, "destination") for r in current.egress_security_rules or []})
        if want != have:
            changes[display] = {"before": [sorted(map(str, s)) for s in have], "after": [sorted(map(str, s)) for s in want]}
            if not mod.check_mode:
                o.call(update_fn, current.id, details_cls(ingress_security_rules=ingress, egress_security_rules=egress))

    def remove():
        """Children first (OCI refuses to delete a VCN that still has them); the VCN's default
        route table, security list and DHCP options go with it."""
        vcn = o.find(net.list_vcns, comp, name=f"{name}-vcn")
        if vcn is not None:
            for kind, display, list_fn, delete_fn, get_fn in (
                    ("subnet", f"{name}-lb", net.list_subnets, net.delete_subnet, net.get_subnet),
                    ("subnet", f"{name}-nodes", net.list_subnets, net.delete_subnet, net.get_subnet),
                    ("security list", f"{name}-lb-sl", net.list_security_lists, net.delete_security_list, net.get_security_list),
                    ("security list", f"{name}-nodes-sl", net.list_security_lists, net.delete_security_list, net.get_security_list),
                    ("route table", f"{name}-rt", net.list_route_tables, net.delete_route_table, net.get_route_table),
                    ("internet gateway", f"{name}-igw", net.list_internet_gateways, net.delete_internet_gateway,
                     net.get_internet_gateway)):
                cur = o.find(list_fn, comp, name=display, vcn_id=vcn.id)
                if cur is not None:
                    changes[display] = "delete"
                    if not mod.check_mode:
                        o.delete(delete_fn, get_fn, cur.id, kind)
            changes[f"{name}-vcn"] = "delete"
            if not mod.check_mode:
                o.delete(net.delete_vcn, net.get_vcn, vcn.id, "vcn")
        return mod.result(bool(changes), dict(vcn_id=None, lb_subnet_id=None, node_subnet_id=None),
                          before=changes, after={}, changes=changes)

    def body():
        if p["state"] == "absent":
            return remove()
        vcn = ensure("vcn", f"{name}-vcn", net.list_vcns, net.create_vcn, m.CreateVcnDetails(
            compartment_id=comp, cidr_block=p["vcn_cidr"], display_name=f"{name}-vcn"), net.get_vcn)
        under = {"vcn_id": vcn.id} if vcn else None
        vid = vcn.id if vcn else None
        igw = ensure("internet gateway", f"{name}-igw", net.list_internet_gateways, net.create_internet_gateway,
                     m.CreateInternetGatewayDetails(compartment_id=comp, vcn_id=vid, is_enabled=True,
                                                    display_name=f"{name}-igw"), net.get_internet_gateway, under)
        rules = [m.RouteRule(destination="0.0.0.0/0", destination_type="CIDR_BLOCK",
                             network_entity_id=igw.id if igw else None)]
        rt = ensure("route table", f"{name}-rt", net.list_route_tables, net.create_route_table,
                    m.CreateRouteTableDetails(compartment_id=comp, vcn_id=vid, route_rules=rules,
                                              display_name=f"{name}-rt"), net.get_route_table, under)
        port = p["listen_port"]
        everywhere = [m.EgressSecurityRule(protocol="all", destination="0.0.0.0/0", destination_type="CIDR_BLOCK")]
        lb_in = [tcp_in("0.0.0.0/0", port), path_mtu()] + ([tcp_in("0.0.0.0/0", p["https_port"])] if p["https_port"] else [])
        lb_out = [m.EgressSecurityRule(protocol="6", destination=p["node_subnet_cidr"], destination_type="CIDR_BLOCK",
                                       tcp_options=m.TcpOptions(destination_port_range=m.PortRange(min=port, max=port)))]
        node_in = [tcp_in(p["lb_subnet_cidr"], port), path_mtu()] + ([tcp_in(p["admin_cidr"], 22)] if p["admin_cidr"] else [])
        lists = {}
        for role, ingress, egress in (("lb", lb_in, lb_out), ("nodes", node_in, everywhere)):
            display = f"{name}-{role}-sl"
            sl = ensure("security list", display, net.list_security_lists, net.create_security_list,
                        m.CreateSecurityListDetails(compartment_id=comp, vcn_id=vid, display_name=display,
                                                    ingress_security_rules=ingress, egress_security_rules=egress),
                        net.get_security_list, under)
            if display not in changes:
                ensure_rules(display, sl, ingress, egress, net.update_security_list, m.UpdateSecurityListDetails, role)
            lists[role] = sl
        subnets = {}
        for role, cidr in (("lb", p["lb_subnet_cidr"]), ("nodes", p["node_subnet_cidr"])):
            display = f"{name}-{role}"
            subnets[role] = ensure("subnet", display, net.list_subnets, net.create_subnet, m.CreateSubnetDetails(
                compartment_id=comp, vcn_id=vid, cidr_block=cidr, display_name=display,
                route_table_id=rt.id if rt else None, prohibit_public_ip_on_vnic=False,
                security_list_ids=[lists[role].id] if lists[role] else None), net.get_subnet, under)
        ids = dict(vcn_id=vid, lb_subnet_id=getattr(subnets["lb"], "id", None),
                   node_subnet_id=getattr(subnets["nodes"], "id", None))
        return mod.result(bool(changes), ids, before={}, after=changes, changes=changes)

    mod.run(body)


if __name__ == "__main__":
    main()
