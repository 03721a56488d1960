#!/usr/bin/python
# The pool's public load balancer on OCI: an HTTP listener whose idle timeout lets long streams live,
# and a least-connections backend set health-checked on the nodes' /readyz.
from __future__ import annotations

DOCUMENTATION = r"""
module: oci_load_balancer
short_description: Public flexible load balancer for an ampere-llm pool
version_added: 0.1.0
author:
- ampere-llm maintainers (!UNKNOWN)
description:
- Creates (or finds by display name) a public flexible load balancer with one HTTP listener and one backend set.
  Backends are not managed here; the instance pool registers its nodes.
- The listener's idle timeout (default 3600 s) is far above OCI's 60 s default, because a long CPU prefill sends
  no byte for a while and a reply streams for minutes.
- The health check asks GET health_path for 200; the node's /readyz is 503 while the model loads and while the node
  drains.
- Drifted listener or backend-set settings are put back (asynchronous work requests, waited for). OCI's backend-set
  update replaces the whole backend list, so the list sent is the one read with the backend set's etag, sent with
  if-match; if the pool registered a node in between, OCI refuses (412) and the module reads again - no backend is
  dropped.
- HTTPS (https_certificate_id or https_certificate_file) adds a listener on https_port that terminates TLS with a
  certificate from OCI's Certificates service (by OCID) or an uploaded PEM, and (redirect_http) a rule set that answers
  the HTTP listener with a 301 to the same URL over HTTPS, so no API key travels in clear after the first request.
options:
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
  https_port:
    type: int
    description: Port of the HTTPS listener (with a certificate below).
    default: 443
  https_certificate_id:
    type: str
    description: OCID of a certificate in OCI's Certificates service (the load balancer must be allowed to use it, see
      docs/oci.md); mutually exclusive with https_certificate_file.
  https_certificate_file:
    type: path
    description: PEM certificate (chain) on the control node, uploaded to the load balancer with
      https_private_key_file.
  https_private_key_file:
    type: path
    description: PEM private key of https_certificate_file, read on the control node (never returned or logged).
  redirect_http:
    type: bool
    description: With HTTPS, answer plain HTTP with a 301 to HTTPS.
    default: true
notes:
- Supports check mode and diff mode.
extends_documentation_fragment:
- ampere.llm.oci
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
url:
  description: The pool's URL (https when an HTTPS listener is configured).
  type: str
  returned: success
"""

import hashlib

from ansible_collections.ampere.llm.plugins.module_utils.oci_common import (
    STATE,
    OciError,
    OciModule,
    ServiceError,
    drift,
    explain,
    to_dict,
)
from ansible_collections.ampere.llm.plugins.module_utils.oci_common import lb_models as m


def main():
    mod = OciModule(dict(
        name=dict(type="str", default="ampere-llm-lb"),
        subnet_ids=dict(type="list", elements="str"),
        state=STATE,
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
        https_port=dict(type="int", default=443),
        https_certificate_id=dict(type="str"),
        https_certificate_file=dict(type="path"),
        https_private_key_file=dict(type="path"),
        redirect_http=dict(type="bool", default=True),
    ), required_if=[("state", "present", ["subnet_ids"])], mutually_exclusive=[("https_certificate_id", "https_certificate_file")],
        required_together=[("https_certificate_file", "https_private_key_file")])
    p, o = mod.params, mod.oci
    if not 1 <= p["idle_timeout"] <= 7200:
        mod.fail_json(msg=f"idle_timeout={p['idle_timeout']}: OCI accepts 1..7200 seconds")
    lb, bs_name, listener_name = o.lb, p["backend_set"], "http"
    https = bool(p["https_certificate_id"] or p["https_certificate_file"])
    redirect = https and p["redirect_http"]
    rule_set = "redirect_to_https"
    cert_name, pem = None, {}
    if p["https_certificate_file"]:
        try:
            for k in ("certificate", "private_key"):
                with open(p[f"https_{k}_file"]) as f:
                    pem[k] = f.read()
        except OSError as e:
            mod.fail_json(msg=f"cannot read the HTTPS {k.replace('_', ' ')} file: {e.strerror}")
        # Named by content: a renewed certificate is uploaded beside the old one, then used.
        cert_name = "ampere-llm-" + hashlib.sha256(pem["certificate"].encode()).hexdigest()[:12]

    health = m.HealthCheckerDetails(protocol="HTTP", url_path=p["health_path"], port=p["backend_port"], return_code=200,
                                    interval_in_millis=p["health_interval_ms"], timeout_in_millis=p["health_timeout_ms"],
                                    retries=p["health_retries"])
    listener = m.ListenerDetails(default_backend_set_name=bs_name, port=p["listen_port"], protocol="HTTP",
                                 connection_configuration=m.ConnectionConfiguration(idle_timeout=p["idle_timeout"]))
    want_listener = dict(port=p["listen_port"], protocol="HTTP", default_backend_set_name=bs_name,
                         idle_timeout=p["idle_timeout"], rule_set_names=[rule_set] if redirect else [])
    want_set = dict(policy=p["policy"], url_path=p["health_path"], port=p["backend_port"], return_code=200,
                    interval_in_millis=p["health_interval_ms"], timeout_in_millis=p["health_timeout_ms"],
                    retries=p["health_retries"], protocol="HTTP")

    def out(cur):
        ips = [a.ip_address for a in (cur.ip_addresses or []) if a.is_public] if cur else []
        ip = ips[0] if ips else None
        url = None if ip is None else (f"https://{ip}/" if p["https_port"] == 443 else f"https://{ip}:{p['https_port']}/") \
            if https else f"http://{ip}/" if p["listen_port"] == 80 else f"http://{ip}:{p['listen_port']}/"
        return dict(load_balancer_id=cur.id if cur else None, public_ip=ip, backend_set=bs_name, url=url)

    def ssl():
        if p["https_certificate_id"]:
            return m.SSLConfigurationDetails(certificate_ids=[p["https_certificate_id"]])
        return m.SSLConfigurationDetails(certificate_name=cert_name)

    def https_changes(cur):
        """What the HTTPS side lacks: the uploaded certificate, the redirect rule set, the listener."""
        todo = {}
        if cert_name and cert_name not in (cur.certificates or {}):
            todo["certificate"] = cert_name
        if redirect and rule_set not in (cur.rule_sets or {}):
            todo["rule_set"] = rule_set
        li = (cur.listeners or {}).get("https")
        have = dict(port=li.port, certificate=(li.ssl_configuration.certificate_ids or [li.ssl_configuration.certificate_name])[0]
                    if li.ssl_configuration else None, idle_timeout=li.connection_configuration.idle_timeout
                    if li.connection_configuration else None) if li else None
        want = dict(port=p["https_port"], certificate=p["https_certificate_id"] or cert_name, idle_timeout=p["idle_timeout"])
        if have != want:
            todo["https_listener"] = dict(before=have, after=want, create=li is None)
        return todo

    def apply_https(cur, todo):
        if "certificate" in todo:
            o.wait_lb_work(o.call(lb.create_certificate, m.CreateCertificateDetails(
                certificate_name=cert_name, public_certificate=pem["certificate"], private_key=pem["private_key"]),
                cur.id), "upload the HTTPS certificate")
        if "rule_set" in todo:
            to_https = m.RedirectRule(conditions=[], response_code=301, redirect_uri=m.RedirectUri(
                protocol="HTTPS", port=p["https_port"], host="{host}", path="{path}", query="{query}"))
            o.wait_lb_work(o.call(lb.create_rule_set, cur.id, m.CreateRuleSetDetails(name=rule_set, items=[to_https])),
                           "create the HTTP-to-HTTPS redirect")
        if "https_listener" in todo:
            kw = dict(default_backend_set_name=bs_name, port=p["https_port"], protocol="HTTP", ssl_configuration=ssl(),
                      connection_configuration=listener.connection_configuration)
            if todo["https_listener"]["create"]:
                o.wait_lb_work(o.call(lb.create_listener, m.CreateListenerDetails(name="https", **kw), cur.id),
                               "create the HTTPS listener")
            else:
                o.wait_lb_work(o.call(lb.update_listener, m.UpdateListenerDetails(**kw), cur.id, "https"),
                               "update the HTTPS listener")

    def update_backend_set():
        """Health checker and policy back to what is wanted, WITHOUT touching the backends: OCI's
        update replaces the whole list, so send the list of this etag; 412 means the pool registered
        a node since the read: read again."""
        for _attempt in range(5):  # a few re-reads; the count is all that matters
            got = o.call(lb.get_backend_set, cur_id[0], bs_name)
            backends = [m.BackendDetails(ip_address=b.ip_address, port=b.port, weight=b.weight, backup=b.backup,
                                         drain=b.drain, offline=b.offline) for b in got.data.backends or []]
            try:
                resp = lb.update_backend_set(m.UpdateBackendSetDetails(
                    policy=p["policy"], backends=backends, health_checker=health), cur_id[0], bs_name,
                    if_match=got.headers.get("etag"))
            except ServiceError as e:
                if e.status == 412:
                    continue
                raise OciError(explain(e, "update backend set")) from None
            return o.wait_lb_work(resp, "update backend set")
        raise OciError(f"backend set {bs_name} kept changing while its health check was being put back: run again")

    cur_id = [None]

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
            if https:
                apply_https(cur, https_changes(cur))
            if redirect:
                o.wait_lb_work(o.call(lb.update_listener, m.UpdateListenerDetails(
                    default_backend_set_name=bs_name, port=p["listen_port"], protocol="HTTP", rule_set_names=[rule_set],
                    connection_configuration=listener.connection_configuration), cur.id, listener_name),
                    "redirect HTTP to HTTPS")
            return mod.result(True, out(cur), after=after)

        changes = {}
        li = (cur.listeners or {}).get(listener_name)
        have_listener = dict(port=li.port, protocol=li.protocol, default_backend_set_name=li.default_backend_set_name,
                             idle_timeout=li.connection_configuration.idle_timeout if li.connection_configuration else None,
                             rule_set_names=li.rule_set_names or []) if li else {}
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
        todo = https_changes(cur) if https else {}
        if todo:
            changes["https"] = {k: dict(before=None if k != "https_listener" else v["before"],
                                        after=v if k != "https_listener" else v["after"]) for k, v in todo.items()}
        if changes and not mod.check_mode:
            cur_id[0] = cur.id
            if todo:  # the rule set must exist before the HTTP listener names it
                apply_https(cur, todo)
            if "listener" in changes:
                o.wait_lb_work(o.call(lb.update_listener, m.UpdateListenerDetails(
                    default_backend_set_name=bs_name, port=p["listen_port"], protocol="HTTP",
                    rule_set_names=want_listener["rule_set_names"],
                    connection_configuration=listener.connection_configuration), cur.id, listener_name), "update listener")
            if "backend_set" in changes:
                update_backend_set()
        return mod.result(bool(changes), out(cur), before={k: {kk: v["before"] for kk, v in c.items()} for k, c in changes.items()},
                          after={k: {kk: v["after"] for kk, v in c.items()} for k, c in changes.items()})

    mod.run(body)


if __name__ == "__main__":
    main()
