"""A local stand-in of exactly the OCI endpoints the ampere.llm modules call, for tests only.

It listens on 127.0.0.1, VERIFIES every request's signature (OCI's draft-cavage HTTP signatures,
rsa-sha256, with the body headers on PUT/POST) against the test key, keeps resource state with the
real lifecycle transitions (PROVISIONING -> AVAILABLE/RUNNING, load balancer work requests,
TERMINATING -> TERMINATED) and answers with JSON made by the SDK's own models and serializer, so
the SDK parses it exactly as it parses OCI. It also plays the load balancer's health checks:
a backend has no health data for `health_delay` seconds after its instance runs (OCI's backend-set
health then lists it nowhere; its own health is UNKNOWN), then turns OK, or CRITICAL if its image
is "bad", or never gets data if its image is in `no_health_images`.

And it says no the way OCI does:
- instance pool launches are accepted at once and fail later, in the compute work request, with
  OCI's text ("Out of host capacity.") when `host_capacity` launches are used up;
- a mutation of a load balancer with a work request in progress, or of a pool that is scaling,
  gets 409 (Conflict / IncorrectState); `interfere` makes that happen on purpose: before the
  named operation runs, something else starts changing the same resource;
- a principal whose policy lacks a family (`denied`) gets 404 NotAuthorizedOrNotFound;
- creates honour opc-retry-token: the same token gets the first answer again, never a second
  resource (`lose_answer` drops an answer once, as a network would, to make the SDK retry);
- a backend set carries an etag and refuses a stale if-match with 412;
- a pool with a pre-termination action drains a leaving node's backend and terminates it after
  the timeout (scaled down to `pre_termination_wait` seconds);
- PostMetricData (telemetry-ingestion) checks each metric object by OCI's rules (namespace, name,
  1-20 dimensions, metadata, timestamps less than 2 h old and less than 10 min ahead, at most 50
  metric streams a call) and answers failedMetrics as OCI does (NON_ATOMIC: the rest is kept;
  ATOMIC or all failed: 400 InvalidParameter); the metrics it keeps are in `metrics`;
- autoscaling policies are checked as OCI does: cool-down >= 300 s, COMPUTE_AGENT rules with a CPU
  or memory threshold, CUSTOM_QUERY rules with a namespace, a pending duration of PT3M-PT1H and an
  MQL threshold query (a malformed one: 400 InvalidParameter); `evaluate_autoscaling()` runs the
  queries over the posted metrics (mean/max/min/sum/count over the window) and scales the pool as
  OCI's alarms would (cool-down and pending duration not modelled);
- IAM policies (`policies`, statements as text, read by oci_preflight) are listed per compartment.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
import time
import uuid
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import oci
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from oci.autoscaling import models as asm
from oci.core import models as cm
from oci.identity import models as im
from oci.load_balancer import models as lbm
from oci.monitoring import models as mm
from oci.work_requests import models as wrm

AD = "Uocm:STANDIN-AD-1"
AD2 = "Uocm:STANDIN-AD-2"
OUT_OF_CAPACITY = "Out of host capacity."
COMPARTMENT_NAME = "ampere-llm"
# The statement docs/oci.md gives the nodes (a dynamic group with `use metrics` in the compartment).
NODE_METRICS_POLICY = ("Allow dynamic-group ampere-llm-nodes to use metrics in compartment ampere-llm "
                       "where target.metrics.namespace='ampere_llm'")
# OCI's rules for custom metrics (the SDK's MetricDataDetails docs; PostMetricData's per-call limits).
NAMESPACE_RX = re.compile(r"^[a-z][a-z0-9_]*[a-z0-9]$")
METRIC_NAME_RX = re.compile(r"^[A-Za-z][A-Za-z0-9_.$-]*$")
DIMENSION_KEY_RX = re.compile(r"^[!-~]{1,256}$")   # printable ASCII, no space
MAX_STREAMS, MAX_DIMENSIONS = 50, 20
# An MQL threshold query as OCI's autoscaling takes it (an alarm's trigger rule).
MQL_RX = re.compile(
    r'^\s*(?P<metric>[A-Za-z][A-Za-z0-9_.$-]*)\[(?P<n>\d+)(?P<unit>[mh])\]'
    r'(?:\{(?P<dims>\s*[A-Za-z][\w.-]*\s*(?:=|!=|=~)\s*"[^"]*"(?:\s*,\s*[A-Za-z][\w.-]*\s*(?:=|!=|=~)\s*"[^"]*")*\s*)\})?'
    r'(?P<g1>\.(?:grouping\(\)|groupBy\([^)]+\)))?'
    r'\.(?P<stat>mean|sum|count|max|min|rate|last|avg|percentile)\((?P<arg>[^)]*)\)'
    r'(?P<g2>\.(?:grouping\(\)|groupBy\([^)]+\)))?'
    r'\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>-?\d+(?:\.\d+)?)\s*$')


def family(version, path):
    """The IAM resource family a policy must grant for a request (None: every user may)."""
    if version == "20170115":
        return "load-balancers"
    if version == "20181001":
        return "auto-scaling-configurations"
    if version == "20190729":
        return "resource-availability"
    if version == "20180401":
        return "metrics"
    top = path.split("/")[2]
    if top in ("instanceConfigurations", "instancePools", "workRequests"):
        return "compute-management-family"
    if top in ("images", "instances", "shapes", "vnicAttachments"):
        return "instance-family"
    if top == "availabilityDomains":
        return None
    if top in ("policies", "compartments"):
        return "policies"
    return "virtual-network-family"


class ApiError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def now():
    return datetime.now(timezone.utc)


def build(cls, details=None, **extra):
    """A model of `cls` filled from the same-named fields of a *Details model, then `extra`."""
    kw = {}
    if details is not None:
        kw = {k: getattr(details, k) for k in details.swagger_types if k in cls().swagger_types}
    kw.update(extra)
    return cls(**{k: v for k, v in kw.items() if v is not None})


class StandIn:
    def __init__(self, tenancy, user, fingerprint, public_key_pem, config, delay=0.2, health_delay=0.4):
        self.key_id = f"{tenancy}/{user}/{fingerprint}"
        self.public_key = serialization.load_pem_public_key(public_key_pem)
        self.delay, self.health_delay = delay, health_delay
        self.bad_images: set[str] = set()      # instances of these images never pass health checks
        self.no_health_images: set[str] = set()  # ... and of these never get health data at all
        self.instance_limit = 100              # service limit on instances (400 LimitExceeded above)
        self.host_capacity = 1000              # launches OCI can still place; then "Out of host capacity."
        self.shapes = {AD: {"VM.Standard.A2.Flex", "VM.Standard.A1.Flex"}, AD2: {"VM.Standard.A1.Flex"}}
        self.denied: set[str] = set()          # policy families this principal lacks (404 on their APIs)
        self.interfere: dict[str, int] = {}    # handler name -> times another change starts just before it
        self.lose_answer: set[str] = set()     # handler names whose next answer is lost (503 after doing it)
        self.pre_termination_wait = 0.5        # seconds a pre-termination timeout lasts here
        self.on_backend_set_read = None        # test hook: runs after a GET of a backend set
        self.conflicts: list[tuple[str, str]] = []   # (method, path) answered 409
        self.retry_tokens: dict[str, tuple] = {}     # opc-retry-token -> the first answer
        self.creates_without_token: list[str] = []
        self.core_limit = {"standard-a2-core-count": 200, "standard-a1-core-count": 200}  # per AD, cores
        self.metrics: list[dict] = []          # every datapoint PostMetricData accepted
        self.policies = [NODE_METRICS_POLICY]  # IAM statements in the compartment (a tenancy has more)
        self.scaled: list[tuple[str, int]] = []  # (autoscaling configuration id, step) evaluate_autoscaling took
        self.lock = threading.RLock()
        self.res: dict[str, object] = {}       # OCID -> SDK model
        self.kind: dict[str, str] = {}         # OCID -> kind
        self.pending: list[tuple[float, callable]] = []
        self.requests: list[tuple[str, str]] = []   # (method, path) of every verified request
        self.events: list[tuple[float, str, str]] = []  # (time, what, id): drains, detaches, ...
        self.serving_log: list[tuple[float, int]] = []  # (time, backends OK and not drained)
        self.ip = itertools.count(10)
        # Each service's serializer: the SDK's own, so shapes and camelCase names are OCI's.
        self.ser = {v: c(config).base_client for v, c in {
            "20160918": oci.core.ComputeClient, "20170115": oci.load_balancer.LoadBalancerClient,
            "20181001": oci.autoscaling.AutoScalingClient, "20190729": oci.limits.LimitsClient,
            "20180401": oci.monitoring.MonitoringClient}.items()}
        self.ident = oci.identity.IdentityClient(config).base_client
        self.routes = [(m, re.compile(f"^/{v}{p}$"), h) for m, v, p, h in self._routes()]
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def later(self, fn, delay=None):
        self.pending.append((time.monotonic() + (self.delay if delay is None else delay), fn))

    def tick(self):
        due = [p for p in self.pending if p[0] <= time.monotonic()]
        self.pending = [p for p in self.pending if p[0] > time.monotonic()]
        for _, fn in sorted(due, key=lambda p: p[0]):
            fn()

    def new_id(self, kind, model):
        model.id = f"ocid1.{kind.lower()}.oc1.standin.{uuid.uuid4().hex[:20]}"
        self.res[model.id], self.kind[model.id] = model, kind
        return model

    def get(self, rid, kind):
        if self.kind.get(rid) != kind:
            raise ApiError(404, "NotAuthorizedOrNotFound", f"{kind} {rid} not found or not authorized")
        return self.res[rid]

    def of_kind(self, kind, q, **match):
        out = [r for i, r in self.res.items() if self.kind[i] == kind
               and getattr(r, "compartment_id", None) == q.get("compartmentId")]
        for attr, param in match.items():
            if q.get(param) is not None:
                out = [r for r in out if getattr(r, attr) == q[param]]
        return out

    # ---- test helpers --------------------------------------------------------------------
    def add_instance(self, compartment_id, image_id="ocid1.image.oc1.standin.ubuntu", name="seed"):
        with self.lock:
            return self._launch(compartment_id, image_id, name, None, cm.InstancePoolPlacementConfiguration(
                availability_domain=AD, fault_domains=["FAULT-DOMAIN-1"])).id

    def add_image(self, compartment_id, name):
        """An AVAILABLE custom image, as if bake.yml had made it."""
        with self.lock:
            return self.new_id("Image", cm.Image(compartment_id=compartment_id, display_name=name, time_created=now(),
                                                 lifecycle_state="AVAILABLE", operating_system="Canonical Ubuntu")).id

    def of(self, kind):
        with self.lock:
            return [r for i, r in self.res.items() if self.kind[i] == kind]

    def mutations(self):
        return [r for r in self.requests if r[0] != "GET" and not r[1].endswith("/actions/listMetrics")]  # a POST read

    def backend_health(self, lb, bs_name):
        with self.lock:
            return {b.name: self._health(b) for b in lb.backend_sets[bs_name].backends}

    # ---- signature check -----------------------------------------------------------------
    def verify(self, method, path, headers, body):
        auth = headers.get("authorization", "")
        if not auth.startswith("Signature "):
            raise ApiError(401, "NotAuthenticated", "missing Signature authorization")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', auth))
        if fields.get("keyId") != self.key_id or fields.get("algorithm") != "rsa-sha256":
            raise ApiError(401, "NotAuthenticated", "unknown keyId or algorithm")
        signed = fields.get("headers", "").split()
        need = {"date", "(request-target)", "host"}
        if method in ("POST", "PUT", "PATCH"):
            need |= {"x-content-sha256", "content-type", "content-length"}
            digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
            if headers.get("x-content-sha256") != digest or int(headers.get("content-length", -1)) != len(body):
                raise ApiError(401, "NotAuthenticated", "body does not match x-content-sha256/content-length")
        if not need <= set(signed):
            raise ApiError(401, "NotAuthenticated", f"signature must cover {sorted(need)}")
        if abs((now() - parsedate_to_datetime(headers["date"])).total_seconds()) > 300:
            raise ApiError(401, "NotAuthenticated", "date header too far from now")
        lines = [f"(request-target): {method.lower()} {path}" if h == "(request-target)" else f"{h}: {headers[h]}"
                 for h in signed]
        try:
            self.public_key.verify(base64.b64decode(fields["signature"]), "\n".join(lines).encode(),
                                   padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError, TypeError):  # bad signature or undecodable base64
            raise ApiError(401, "NotAuthenticated", "signature does not verify") from None

    # ---- HTTP plumbing -------------------------------------------------------------------
    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _do(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, out, extra = standin.dispatch(self.command, self.path, headers, body)
                data = b"" if out is None else json.dumps(out).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("opc-request-id", uuid.uuid4().hex)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _do

        return Handler

    def dispatch(self, method, raw_path, headers, body):
        with self.lock:
            try:
                self.verify(method, raw_path, headers, body)
                self.tick()
                url = urlsplit(raw_path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                for m, rx, handler in self.routes:
                    if m == method and (match := rx.match(url.path)):
                        return self._answer(method, url.path, q, headers, body, handler, match)
                raise ApiError(404, "NotFound", f"the stand-in has no {method} {url.path}")
            except ApiError as e:
                if e.status == 409:
                    self.conflicts.append((method, urlsplit(raw_path).path))
                return e.status, {"code": e.code, "message": e.message}, {}

    def _answer(self, method, path, q, headers, body, handler, match):
        self.requests.append((method, path))
        version = path.split("/")[1]
        if family(version, path) in self.denied:
            raise ApiError(404, "NotAuthorizedOrNotFound", "Authorization failed or requested resource not found.")
        name = getattr(handler, "__name__", "")
        token = headers.get("opc-retry-token") if method == "POST" else None
        if token and token in self.retry_tokens:  # a retried create: the first answer again
            return self.retry_tokens[token]
        if method == "POST" and "/actions/" not in path and not token and version != "20180401":  # posts are no creates
            self.creates_without_token.append(path)
        if self.interfere.get(name):
            self.interfere[name] -= 1
            self._interfere(*map(unquote, match.groups()))
        ident = path.endswith("/availabilityDomains") or family(version, path) == "policies"
        ser = self.ident if ident else self.ser[version]
        parse = lambda t: ser.deserialize_response_data(body, t)  # noqa: E731
        self.headers = headers
        result = handler(q, parse, *map(unquote, match.groups()))
        status, model, extra = result if isinstance(result, tuple) else (200, result, {})
        self.record_serving()
        answer = status, None if model is None else ser.sanitize_for_serialization(model), extra
        if token:
            self.retry_tokens[token] = answer
        if name in self.lose_answer:  # done, but the answer never arrives: the client must retry
            self.lose_answer.discard(name)
            raise ApiError(503, "ServiceUnavailable", "the answer was lost on the way")
        return answer

    def _interfere(self, rid, *_):
        """Something else starts changing `rid` right now (the pool scales, the balancer runs another
        work request), as autoscaling or a colleague in the console would: OCI answers 409 until done."""
        if self.kind.get(rid) == "LoadBalancer":
            self.work(self.res[rid], "UpdateLoadBalancer", lambda: None, delay=self.delay * 3)
        elif self.kind.get(rid) == "InstancePool":
            pool = self.res[rid]
            pool.lifecycle_state = "SCALING"
            self.later(lambda: setattr(pool, "lifecycle_state", "RUNNING"), delay=self.delay * 3)

    def _lb_idle(self, lb):
        busy = [w for w in self.of("WorkRequest") if w.load_balancer_id == lb.id and w.lifecycle_state == "IN_PROGRESS"]
        if busy:
            raise ApiError(409, "Conflict", f"Load balancer {lb.id} has work request {busy[0].id} in progress; "
                                            f"only one change at a time")

    def _pool_idle(self, pool):
        if pool.lifecycle_state != "RUNNING":
            raise ApiError(409, "IncorrectState", f"Instance pool {pool.id} is {pool.lifecycle_state}; "
                                                  f"it can be changed when it is RUNNING")

    def _routes(self):
        core, lb, asc = "20160918", "20170115", "20181001"
        return [
            ("GET", "20190729", "/services/compute/limits/([^/]+)/resourceAvailability", self.resource_availability),
            ("GET", core, "/availabilityDomains", lambda q, p: [im.AvailabilityDomain(
                name=ad, id=f"ocid1.availabilitydomain.oc1.standin{n}", compartment_id=q.get("compartmentId"))
                for n, ad in enumerate(self.shapes)]),
            ("GET", core, "/shapes", lambda q, p: [cm.Shape(shape=s) for s in sorted(
                self.shapes.get(q.get("availabilityDomain"), set()) if q.get("availabilityDomain")
                else set().union(*self.shapes.values()))]),
            ("GET", core, "/workRequests/([^/]+)", lambda q, p, i: self.get(i, "ComputeWorkRequest")),
            ("GET", core, "/workRequests/([^/]+)/errors", lambda q, p, i: self.get(i, "ComputeWorkRequest")._errors),
            ("GET", core, "/workRequests", lambda q, p: [
                w for w in self.of("ComputeWorkRequest") if w.compartment_id == q.get("compartmentId")
                and (not q.get("resourceId") or any(r.identifier == q["resourceId"] for r in w.resources))]),
            *self._simple_routes(core),
            ("POST", core, "/images", self.create_image),
            ("GET", core, "/images", lambda q, p: self.of_kind("Image", q, display_name="displayName")),
            ("GET", core, "/images/([^/]+)", lambda q, p, i: self.get(i, "Image")),
            ("GET", core, "/instances/([^/]+)", lambda q, p, i: self.get(i, "Instance")),
            ("GET", core, "/vnicAttachments", lambda q, p: self.of_kind("VnicAttachment", q, instance_id="instanceId")),
            ("GET", core, "/vnics/([^/]+)", lambda q, p, i: self.get(i, "Vnic")),
            ("POST", core, "/instanceConfigurations", self.create_instance_configuration),
            ("GET", core, "/instanceConfigurations", lambda q, p: [
                build(cm.InstanceConfigurationSummary, c) for c in self.of_kind("InstanceConfiguration", q)]),
            ("GET", core, "/instanceConfigurations/([^/]+)", lambda q, p, i: self.get(i, "InstanceConfiguration")),
            ("POST", core, "/instancePools", self.create_instance_pool),
            ("GET", core, "/instancePools", lambda q, p: [
                build(cm.InstancePoolSummary, x, availability_domains=[AD]) for x in
                self.of_kind("InstancePool", q, display_name="displayName")]),
            ("GET", core, "/instancePools/([^/]+)", lambda q, p, i: self.get(i, "InstancePool")),
            ("PUT", core, "/instancePools/([^/]+)", self.update_instance_pool),
            ("GET", core, "/instancePools/([^/]+)/instances", self.list_pool_instances),
            ("DELETE", core, "/instancePools/([^/]+)", self.terminate_pool),
            ("DELETE", core, "/instanceConfigurations/([^/]+)", self.delete_instance_configuration),
            ("DELETE", lb, "/loadBalancers/([^/]+)", self.delete_lb),
            ("POST", core, "/instancePools/([^/]+)/actions/detachInstance", self.detach_instance),
            ("POST", lb, "/loadBalancers", self.create_lb),
            ("GET", lb, "/loadBalancers", lambda q, p: self.of_kind("LoadBalancer", q, display_name="displayName")),
            ("GET", lb, "/loadBalancers/([^/]+)", lambda q, p, i: self.get(i, "LoadBalancer")),
            ("GET", lb, "/loadBalancerWorkRequests/([^/]+)", lambda q, p, i: self.get(i, "WorkRequest")),
            ("PUT", lb, "/loadBalancers/([^/]+)/listeners/([^/]+)", self.update_listener),
            ("PUT", lb, "/loadBalancers/([^/]+)/backendSets/([^/]+)", self.update_backend_set),
            ("GET", lb, "/loadBalancers/([^/]+)/backendSets/([^/]+)/health", self.backend_set_health),
            ("GET", lb, "/loadBalancers/([^/]+)/backendSets/([^/]+)", self.get_backend_set),
            ("GET", lb, "/loadBalancers/([^/]+)/backendSets/([^/]+)/backends/([^/]+)/health", self.backend_health_of),
            ("POST", lb, "/loadBalancers/([^/]+)/certificates", self.create_certificate),
            ("GET", lb, "/loadBalancers/([^/]+)/certificates", lambda q, p, i: list(
                self.get(i, "LoadBalancer").certificates.values())),
            ("POST", lb, "/loadBalancers/([^/]+)/ruleSets", self.create_rule_set),
            ("PUT", lb, "/loadBalancers/([^/]+)/ruleSets/([^/]+)", self.update_rule_set),
            ("POST", lb, "/loadBalancers/([^/]+)/listeners", self.create_listener),
            ("PUT", lb, "/loadBalancers/([^/]+)/backendSets/([^/]+)/backends/([^/]+)", self.update_backend),
            ("POST", asc, "/autoScalingConfigurations", self.create_autoscaling),
            ("GET", asc, "/autoScalingConfigurations", lambda q, p: [
                build(asm.AutoScalingConfigurationSummary, a) for a in
                self.of_kind("AutoScalingConfiguration", q, display_name="displayName")]),
            ("GET", asc, "/autoScalingConfigurations/([^/]+)", lambda q, p, i: self.get(i, "AutoScalingConfiguration")),
            ("PUT", asc, "/autoScalingConfigurations/([^/]+)", self.update_autoscaling),
            ("DELETE", asc, "/autoScalingConfigurations/([^/]+)", self.delete_autoscaling),
            ("POST", "20180401", "/metrics", self.post_metric_data),
            ("POST", "20180401", "/metrics/actions/listMetrics", self.list_metrics),
            ("GET", core, "/policies", lambda q, p: [
                im.Policy(id=f"ocid1.policy.oc1..standin{n}", compartment_id=q.get("compartmentId"), name=f"p{n}",
                          statements=[s], description="", lifecycle_state="ACTIVE", time_created=now())
                for n, s in enumerate(self.policies)]),
            ("GET", core, "/compartments/([^/]+)", lambda q, p, i: im.Compartment(
                id=i, name=COMPARTMENT_NAME, compartment_id="ocid1.tenancy.oc1..standintenancy", description="",
                lifecycle_state="ACTIVE", time_created=now())),
        ]

    # ---- networking: create, list, get (and update for rules) with PROVISIONING -> AVAILABLE
    def _simple_routes(self, v):
        kinds = {"vcns": (cm.Vcn, "CreateVcnDetails", None), "subnets": (cm.Subnet, "CreateSubnetDetails", None),
                 "internetGateways": (cm.InternetGateway, "CreateInternetGatewayDetails", None),
                 "routeTables": (cm.RouteTable, "CreateRouteTableDetails", "UpdateRouteTableDetails"),
                 "securityLists": (cm.SecurityList, "CreateSecurityListDetails", "UpdateSecurityListDetails")}
        out = []
        for path, (cls, create_t, update_t) in kinds.items():
            kind = cls.__name__

            def create(q, parse, cls=cls, create_t=create_t, kind=kind):
                d = parse(create_t)
                if getattr(d, "vcn_id", None):
                    self.get(d.vcn_id, "Vcn")
                extra = {"cidr_block": d.cidr_block} if kind == "Vcn" else {}
                m = self.new_id(kind, build(cls, d, lifecycle_state="PROVISIONING", time_created=now(), **extra))
                self.later(lambda: setattr(m, "lifecycle_state", "AVAILABLE"))
                return m

            def update(q, parse, rid, update_t=update_t, kind=kind):
                m, d = self.get(rid, kind), parse(update_t)
                for k in d.swagger_types:
                    if getattr(d, k) is not None:
                        setattr(m, k, getattr(d, k))
                return m

            out += [("POST", v, f"/{path}", create),
                    ("GET", v, f"/{path}",
                     lambda q, p, kind=kind: self.of_kind(kind, q, vcn_id="vcnId", display_name="displayName")),
                    ("GET", v, f"/{path}/([^/]+)", lambda q, p, i, kind=kind: self.get(i, kind))]
            if update_t:
                out.append(("PUT", v, f"/{path}/([^/]+)", update))
            out.append(("DELETE", v, f"/{path}/([^/]+)", lambda q, p, i, kind=kind: self.delete_network(i, kind)))
        return out

    def delete_network(self, rid, kind):
        """Like OCI: 409 while something still lives inside; then TERMINATING -> TERMINATED."""
        m = self.get(rid, kind)
        live = lambda r: getattr(r, "lifecycle_state", "") not in ("TERMINATING", "TERMINATED", "DELETED")  # noqa: E731
        if kind == "Vcn":
            users = [r for r in self.res.values() if getattr(r, "vcn_id", None) == rid and live(r)]
        elif kind == "Subnet":
            users = [lb for lb in self.of("LoadBalancer") if rid in (lb.subnet_ids or []) and live(lb)]
            users += [i for i in self.of("Instance") if live(i) and self._vnic(i).subnet_id == rid]
        else:
            users = [r for r in self.of("Subnet")
                     if live(r) and (r.route_table_id == rid or rid in (r.security_list_ids or []))]
            users += [r for r in self.of("RouteTable")
                      if live(r) and any(x.network_entity_id == rid for x in r.route_rules or [])]
        if users:
            raise ApiError(409, "Conflict", f"{kind} {rid} is still used by {len(users)} resource(s)")
        m.lifecycle_state = "TERMINATING"
        self.later(lambda: setattr(m, "lifecycle_state", "TERMINATED"))
        return 204, None, {}

    def _vnic(self, inst):
        att = next(a for a in self.of("VnicAttachment") if a.instance_id == inst.id)
        return self.res[att.vnic_id]

    # ---- compute -------------------------------------------------------------------------
    def create_image(self, q, parse):
        d = parse("CreateImageDetails")
        self.get(d.instance_id, "Instance")
        img = self.new_id("Image", build(cm.Image, d, lifecycle_state="PROVISIONING", time_created=now(),
                                         operating_system="Canonical Ubuntu", create_image_allowed=True,
                                         launch_mode="PARAVIRTUALIZED"))
        self.later(lambda: setattr(img, "lifecycle_state", "AVAILABLE"))
        return img

    def _launch(self, compartment_id, image_id, name, pool, placement):
        n = next(self.ip)
        fds = placement.fault_domains or ["FAULT-DOMAIN-1", "FAULT-DOMAIN-2", "FAULT-DOMAIN-3"]
        inst = self.new_id("Instance", cm.Instance(
            compartment_id=compartment_id, availability_domain=placement.availability_domain, display_name=name,
            fault_domain=fds[n % len(fds)], image_id=image_id, lifecycle_state="PROVISIONING", region="standin",
            shape="VM.Standard.A2.Flex", time_created=now(),
            instance_configuration_id=pool.instance_configuration_id if pool else None,
            source_details=cm.InstanceSourceViaImageDetails(source_type="image", image_id=image_id)))
        vnic = self.new_id("Vnic", cm.Vnic(compartment_id=compartment_id, private_ip=f"10.0.1.{n}",
                                           lifecycle_state="AVAILABLE", is_primary=True,
                                           subnet_id=placement.primary_subnet_id))
        self.new_id("VnicAttachment", cm.VnicAttachment(
            compartment_id=compartment_id, instance_id=inst.id, vnic_id=vnic.id, lifecycle_state="ATTACHED",
            availability_domain=placement.availability_domain))
        inst._ip, inst._pool, inst._running_since = vnic.private_ip, pool.id if pool else None, None

        def running():
            if inst.lifecycle_state != "PROVISIONING":
                return
            inst.lifecycle_state, inst._running_since = "RUNNING", time.monotonic()
            for att in (pool.load_balancers if pool else []):  # the pool registers its instances
                self.register(self.get(att.load_balancer_id, "LoadBalancer").backend_sets[att.backend_set_name],
                              inst._ip, att.port)
        self.later(running)
        return inst

    def _pool_instances(self, pool):
        return [r for i, r in self.res.items() if self.kind[i] == "Instance" and r._pool == pool.id
                and r.lifecycle_state not in ("TERMINATING", "TERMINATED")]

    def _leave(self, pool, inst):
        """A node the pool itself removes (scale-in, pool termination). With a pre-termination action
        it leaves the pool at once, its backend is drained, and it terminates after the timeout."""
        pre = getattr(getattr(getattr(pool, "lifecycle_management", None), "lifecycle_actions", None),
                      "pre_termination", None)
        if not (pre and pre.is_enabled):
            return self._terminate(inst)
        inst._pool = None
        self.events.append((time.monotonic(), "pre-termination", inst._ip))
        for lb in self.of("LoadBalancer"):
            for bs in lb.backend_sets.values():
                for b in bs.backends:
                    if b.ip_address == inst._ip:
                        b.drain = True
        self.later(lambda: self._terminate(inst), delay=min(pre.timeout, self.pre_termination_wait))

    def _terminate(self, inst):
        self.events.append((time.monotonic(), "terminate", inst._ip))
        inst.lifecycle_state, inst._pool = "TERMINATING", None
        for lb in [r for i, r in self.res.items() if self.kind[i] == "LoadBalancer"]:
            for bs in lb.backend_sets.values():
                bs.backends = [b for b in bs.backends if b.ip_address != inst._ip]
        self.later(lambda: setattr(inst, "lifecycle_state", "TERMINATED"))

    def _resize(self, pool, operation):
        """Launch or remove nodes to reach pool.size, as a compute work request: accepted now, done
        (or FAILED with OCI's error, the pool short of its size) a moment later."""
        have = self._pool_instances(pool)
        cfg = self.get(pool.instance_configuration_id, "InstanceConfiguration")
        image = cfg.instance_details.launch_details.source_details.image_id
        wr = self.new_id("ComputeWorkRequest", wrm.WorkRequest(
            operation_type=operation, status="ACCEPTED", compartment_id=pool.compartment_id, time_accepted=now(),
            percent_complete=0.0, resources=[wrm.WorkRequestResource(
                action_type="IN_PROGRESS", entity_type="instancePool", identifier=pool.id)]))
        wr._errors = []
        wanted = max(0, pool.size - len(have))
        for _ in range(min(wanted, self.host_capacity)):
            self.host_capacity -= 1
            self._launch(pool.compartment_id, image, f"inst-{uuid.uuid4().hex[:5]}", pool,
                         pool.placement_configurations[0])
        for inst in sorted(have, key=lambda i: i.time_created, reverse=True)[:max(0, len(have) - pool.size)]:
            self._leave(pool, inst)
        launched = len(self._pool_instances(pool)) - len(have) if wanted else 0
        failed = wanted - launched
        pool.lifecycle_state = "SCALING" if pool.lifecycle_state == "RUNNING" else pool.lifecycle_state
        wr.status = "IN_PROGRESS"

        def done():
            pool.lifecycle_state = "RUNNING"
            wr.time_finished, wr.percent_complete = now(), 100.0
            if failed:
                wr.status = "FAILED"
                wr._errors = [wrm.WorkRequestError(code="InternalError", message=OUT_OF_CAPACITY, timestamp=now())]
            else:
                wr.status = "SUCCEEDED"
        self.later(done, delay=self.delay * 2)
        return {"opc-work-request-id": wr.id}

    def _check_limit(self, extra):
        used = len([r for i, r in self.res.items() if self.kind[i] == "Instance" and r._pool
                    and r.lifecycle_state not in ("TERMINATING", "TERMINATED")])
        if used + extra > self.instance_limit:
            raise ApiError(400, "LimitExceeded", f"The following service limits were exceeded: "
                           f"standard-a2-core-count (wanted {used + extra} instances, limit {self.instance_limit})")

    def create_instance_configuration(self, q, parse):
        d = parse("CreateInstanceConfigurationDetails")
        return self.new_id("InstanceConfiguration", build(cm.InstanceConfiguration, d, time_created=now()))

    def create_instance_pool(self, q, parse):
        d = parse("CreateInstancePoolDetails")
        self.get(d.instance_configuration_id, "InstanceConfiguration")
        self._check_limit(d.size)
        placements = [build(cm.InstancePoolPlacementConfiguration, p) for p in d.placement_configurations]
        pool = self.new_id("InstancePool", build(cm.InstancePool, d, placement_configurations=placements,
                                                 lifecycle_state="PROVISIONING", time_created=now(), load_balancers=[]))
        for a in d.load_balancers or []:
            self.get(a.load_balancer_id, "LoadBalancer")
            pool.load_balancers.append(build(cm.InstancePoolLoadBalancerAttachment, a, id=f"att-{uuid.uuid4().hex[:8]}",
                                             instance_pool_id=pool.id, lifecycle_state="ATTACHED"))
        return 200, pool, self._resize(pool, "CreateInstancePool")

    def update_instance_pool(self, q, parse, pid):
        pool, d = self.get(pid, "InstancePool"), parse("UpdateInstancePoolDetails")
        self._pool_idle(pool)
        if d.instance_configuration_id:
            self.get(d.instance_configuration_id, "InstanceConfiguration")
            pool.instance_configuration_id = d.instance_configuration_id
        if d.lifecycle_management is not None:
            pool.lifecycle_management = d.lifecycle_management
        extra = {}
        if d.size is not None and (d.size != pool.size or d.size != len(self._pool_instances(pool))):
            self._check_limit(max(0, d.size - len(self._pool_instances(pool))))
            pool.size = d.size
            extra = self._resize(pool, "UpdateInstancePool")
        return 200, pool, extra

    def terminate_pool(self, q, parse, pid):
        pool = self.get(pid, "InstancePool")
        self._pool_idle(pool)
        for inst in self._pool_instances(pool):
            self._leave(pool, inst)
        pool.lifecycle_state = "TERMINATING"
        self.later(lambda: setattr(pool, "lifecycle_state", "TERMINATED"))
        return 204, None, {}

    def delete_instance_configuration(self, q, parse, cid):
        self.get(cid, "InstanceConfiguration")
        del self.res[cid], self.kind[cid]
        return 204, None, {}

    def list_pool_instances(self, q, parse, pid):
        pool = self.get(pid, "InstancePool")
        return [cm.InstanceSummary(id=i.id, availability_domain=i.availability_domain, compartment_id=i.compartment_id,
                                   display_name=i.display_name, fault_domain=i.fault_domain, region="standin",
                                   instance_configuration_id=i.instance_configuration_id, shape=i.shape,
                                   state=i.lifecycle_state.capitalize(), time_created=i.time_created)
                for i in self._pool_instances(pool)]

    def detach_instance(self, q, parse, pid):
        pool, d = self.get(pid, "InstancePool"), parse("DetachInstancePoolInstanceDetails")
        inst = self.get(d.instance_id, "Instance")
        if inst._pool != pool.id:
            raise ApiError(400, "InvalidParameter", f"instance {inst.id} is not in pool {pool.id}")
        self._pool_idle(pool)
        self.events.append((time.monotonic(), "detach", inst._ip))
        if d.is_decrement_size:
            pool.size -= 1
        if d.is_auto_terminate:
            self._terminate(inst)
        return 202, None, {"opc-work-request-id": f"ocid1.workrequest.oc1.standin.{uuid.uuid4().hex[:12]}"}

    # ---- load balancer ---------------------------------------------------------------------
    def work(self, lb, kind, apply, delay=None):
        """LB changes happen asynchronously: a work request that succeeds after `delay`. One at a
        time: a second change while one is IN_PROGRESS gets 409, as on OCI."""
        wr = self.new_id("WorkRequest", lbm.WorkRequest(load_balancer_id=lb.id, type=kind,
                                                         compartment_id=lb.compartment_id,
                                                         lifecycle_state="IN_PROGRESS", message="", time_accepted=now(),
                                                         error_details=[]))

        def done():
            apply()
            wr.lifecycle_state, wr.time_finished = "SUCCEEDED", now()
        self.later(done, delay)
        return 204, None, {"opc-work-request-id": wr.id}

    def create_lb(self, q, parse):
        d = parse("CreateLoadBalancerDetails")
        for s in d.subnet_ids:
            self.get(s, "Subnet")
        listeners = {n: build(lbm.Listener, x, name=n) for n, x in (d.listeners or {}).items()}
        sets = {n: build(lbm.BackendSet, x, name=n, backends=[],
                         health_checker=build(lbm.HealthChecker, x.health_checker))
                for n, x in (d.backend_sets or {}).items()}
        for bs in sets.values():
            bs._etag = 1
        lb = self.new_id("LoadBalancer", build(lbm.LoadBalancer, d, listeners=listeners, backend_sets=sets,
                                               certificates={}, rule_sets={},
                                               lifecycle_state="CREATING", time_created=now(),
                                               ip_addresses=[lbm.IpAddress(ip_address="203.0.113.10", is_public=True)]))
        return self.work(lb, "CreateLoadBalancer", lambda: setattr(lb, "lifecycle_state", "ACTIVE"))

    def delete_lb(self, q, parse, lid):
        lb = self.get(lid, "LoadBalancer")
        self._lb_idle(lb)
        lb.lifecycle_state = "DELETING"
        return self.work(lb, "DeleteLoadBalancer", lambda: setattr(lb, "lifecycle_state", "DELETED"))

    def update_listener(self, q, parse, lid, name):
        lb, d = self.get(lid, "LoadBalancer"), parse("UpdateListenerDetails")
        self._lb_idle(lb)
        return self.work(lb, "UpdateListener", lambda: lb.listeners.__setitem__(name, self._listener(d, name)))

    def _listener(self, d, name):
        ssl = build(lbm.SSLConfiguration, d.ssl_configuration) if d.ssl_configuration else None
        return build(lbm.Listener, d, name=name, ssl_configuration=ssl)

    def create_listener(self, q, parse, lid):
        lb, d = self.get(lid, "LoadBalancer"), parse("CreateListenerDetails")
        self._lb_idle(lb)
        if d.name in lb.listeners:
            raise ApiError(409, "Conflict", f"listener {d.name} exists")
        if d.ssl_configuration:
            ssl = d.ssl_configuration
            if not (ssl.certificate_ids or ssl.certificate_name in lb.certificates):
                raise ApiError(400, "InvalidParameter", "ssl_configuration names no certificate this LB has")
        return self.work(lb, "CreateListener", lambda: lb.listeners.__setitem__(d.name, self._listener(d, d.name)))

    def create_certificate(self, q, parse, lid):
        lb, d = self.get(lid, "LoadBalancer"), parse("CreateCertificateDetails")
        self._lb_idle(lb)
        if "BEGIN CERTIFICATE" not in (d.public_certificate or "") or "PRIVATE KEY" not in (d.private_key or ""):
            raise ApiError(400, "InvalidParameter", "public_certificate and private_key must be PEM")
        return self.work(lb, "CreateCertificate", lambda: lb.certificates.__setitem__(
            d.certificate_name, lbm.Certificate(certificate_name=d.certificate_name,
                                                public_certificate=d.public_certificate,
                                                ca_certificate=d.ca_certificate)))

    def create_rule_set(self, q, parse, lid):
        lb, d = self.get(lid, "LoadBalancer"), parse("CreateRuleSetDetails")
        self._lb_idle(lb)
        return self.work(lb, "CreateRuleSet",
                         lambda: lb.rule_sets.__setitem__(d.name, lbm.RuleSet(name=d.name, items=d.items)))

    def update_rule_set(self, q, parse, lid, name):
        lb, d = self.get(lid, "LoadBalancer"), parse("UpdateRuleSetDetails")
        self._lb_idle(lb)
        return self.work(lb, "UpdateRuleSet",
                         lambda: lb.rule_sets.__setitem__(name, lbm.RuleSet(name=name, items=d.items)))

    def get_backend_set(self, q, parse, lid, name):
        bs = self.get(lid, "LoadBalancer").backend_sets[name]
        answer = 200, bs, {"etag": str(bs._etag)}
        if self.on_backend_set_read:  # e.g. the pool registers a node right after this read
            hook, self.on_backend_set_read = self.on_backend_set_read, None
            hook(bs)
        return answer

    def register(self, bs, ip, port):
        """A backend joins (the pool registers a node): a new etag, no health data yet."""
        bs.backends.append(lbm.Backend(name=f"{ip}:{port}", ip_address=ip, port=port, weight=1, drain=False,
                                       backup=False, offline=False))
        bs._etag += 1

    def update_backend_set(self, q, parse, lid, name):
        lb, d = self.get(lid, "LoadBalancer"), parse("UpdateBackendSetDetails")
        self._lb_idle(lb)
        bs = lb.backend_sets[name]
        if self.headers.get("if-match") not in (None, str(bs._etag)):
            raise ApiError(412, "NoEtagMatch", f"backend set {name} changed since etag {self.headers['if-match']}")

        def apply():
            # Like OCI: `backends` REPLACES the whole list.
            bs.policy, bs.health_checker = d.policy, build(lbm.HealthChecker, d.health_checker)
            bs.backends = [build(lbm.Backend, b, name=f"{b.ip_address}:{b.port}") for b in d.backends or []]
            bs._etag += 1
        return self.work(lb, "UpdateBackendSet", apply)

    def update_backend(self, q, parse, lid, bs_name, name):
        lb, d = self.get(lid, "LoadBalancer"), parse("UpdateBackendDetails")
        self._lb_idle(lb)
        backend = next((b for b in lb.backend_sets[bs_name].backends if b.name == name), None)
        if backend is None:
            raise ApiError(404, "NotFound", f"backend {name} not in {bs_name}")

        def apply():
            if d.drain and not backend.drain:
                self.events.append((time.monotonic(), "drain", backend.ip_address))
            backend.drain, backend.offline, backend.weight = d.drain, d.offline, d.weight
        return self.work(lb, "UpdateBackend", apply)

    def _health(self, backend):
        """OK / CRITICAL, or None while the balancer has no health data for it yet."""
        inst = next((r for i, r in self.res.items()
                     if self.kind[i] == "Instance" and r._ip == backend.ip_address), None)
        if inst is None or inst._running_since is None or inst.image_id in self.no_health_images \
                or time.monotonic() - inst._running_since < self.health_delay:
            return None
        ok = inst.image_id not in self.bad_images and inst.lifecycle_state == "RUNNING"
        return "OK" if ok else "CRITICAL"

    def backend_health_of(self, q, parse, lid, bs_name, name):
        bs = self.get(lid, "LoadBalancer").backend_sets[bs_name]
        backend = next((b for b in bs.backends if b.name == name), None)
        if backend is None:
            raise ApiError(404, "NotFound", f"backend {name} not in {bs_name}")
        return lbm.BackendHealth(status=self._health(backend) or "UNKNOWN", health_check_results=[])

    def backend_set_health(self, q, parse, lid, name):
        """Like OCI: only critical/warning/unknown backends are NAMED; one without data is in no list."""
        backends = self.get(lid, "LoadBalancer").backend_sets[name].backends
        states = {b.name: self._health(b) for b in backends if self._health(b)}
        pick = lambda s: sorted(n for n, v in states.items() if v == s)  # noqa: E731
        status = "OK" if states and all(v == "OK" for v in states.values()) else (
            "CRITICAL" if not states or all(v == "CRITICAL" for v in states.values()) else "WARNING")
        return lbm.BackendSetHealth(status=status, warning_state_backend_names=[],
                                    critical_state_backend_names=pick("CRITICAL"),
                                    unknown_state_backend_names=pick("UNKNOWN"), total_backend_count=len(states))

    def record_serving(self):
        for lb in [r for i, r in self.res.items() if self.kind[i] == "LoadBalancer"]:
            for bs in lb.backend_sets.values():
                n = len([b for b in bs.backends if not b.drain and self._health(b) == "OK"])
                if not self.serving_log or self.serving_log[-1][1] != n:
                    self.serving_log.append((time.monotonic(), n))

    def resource_availability(self, q, parse, name):
        from oci.limits.models import ResourceAvailability
        if name not in self.core_limit:
            raise ApiError(404, "NotFound", f"no limit {name}")
        used = sum(2 for i in self.of("Instance") if i.lifecycle_state not in ("TERMINATING", "TERMINATED")
                   and i.availability_domain == q.get("availabilityDomain")) * 2
        return ResourceAvailability(used=used, available=max(0, self.core_limit[name] - used))

    # ---- monitoring (telemetry-ingestion) ---------------------------------------------------------
    def _metric_error(self, md):
        """Why OCI would refuse one metric object, or None."""
        ns = md.namespace or ""
        if not NAMESPACE_RX.match(ns) or ns.startswith(("oci_", "oracle_")):
            return (f"Invalid namespace '{ns}': must start with a lower case letter, contain only lower case letters, "
                    f"digits and underscores, and not start with oci_ or oracle_")
        if not METRIC_NAME_RX.match(md.name or ""):
            return f"Invalid metric name '{md.name}'"
        if not md.compartment_id:
            return "compartmentId is required"
        dims = md.dimensions or {}
        if not 1 <= len(dims) <= MAX_DIMENSIONS:
            return f"A metric needs 1 to {MAX_DIMENSIONS} dimensions, got {len(dims)}"
        for k, v in dims.items():
            if not DIMENSION_KEY_RX.match(k) or not v or len(v) > 512:
                return f"Invalid dimension {k!r}={v!r}: keys printable ASCII without spaces (<= 256), values 1-512"
        for k, v in (md.metadata or {}).items():
            if len(k) > 256 or len(v or "") > 256:
                return f"Invalid metadata {k!r}: keys and values at most 256 characters"
        if not md.datapoints:
            return "At least one datapoint is required"
        t = now()
        for dp in md.datapoints:
            if dp.timestamp is None or (t - dp.timestamp).total_seconds() >= 7200:
                return f"Datapoint timestamp {dp.timestamp} is more than 2 hours in the past"
            if (dp.timestamp - t).total_seconds() >= 600:
                return f"Datapoint timestamp {dp.timestamp} is more than 10 minutes in the future"
            if dp.count is not None and dp.count <= 0:
                return "Datapoint count must be greater than zero"
        return None

    def post_metric_data(self, q, parse):
        d = parse("PostMetricDataDetails")
        data = d.metric_data or []
        streams = {(m.namespace, m.name, tuple(sorted((m.dimensions or {}).items()))) for m in data}
        if len(streams) > MAX_STREAMS:
            raise ApiError(400, "InvalidParameter", f"At most {MAX_STREAMS} unique metric streams per call, "
                                                     f"got {len(streams)}")
        failed = [mm.FailedMetricRecord(message=err, metric_data=m) for m in data if (err := self._metric_error(m))]
        if failed and (d.batch_atomicity == "ATOMIC" or len(failed) == len(data)):
            raise ApiError(400, "InvalidParameter", "; ".join(f.message for f in failed))
        bad = {id(f.metric_data) for f in failed}
        for m in data:
            if id(m) not in bad:
                self.metrics += [dict(namespace=m.namespace, name=m.name, dimensions=dict(m.dimensions),
                                      compartment_id=m.compartment_id, timestamp=dp.timestamp, value=dp.value)
                                 for dp in m.datapoints]
        return mm.PostMetricDataResponseDetails(failed_metrics_count=len(failed), failed_metrics=failed)

    def list_metrics(self, q, parse):
        d = parse("ListMetricsDetails")
        seen = {(m["namespace"], m["name"], tuple(sorted(m["dimensions"].items()))) for m in self.metrics
                if m["compartment_id"] == q.get("compartmentId") and d.namespace in (None, m["namespace"])}
        return [mm.Metric(namespace=ns, name=n, dimensions=dict(dims), compartment_id=q.get("compartmentId"))
                for ns, n, dims in sorted(seen)]

    # ---- autoscaling ---------------------------------------------------------------------------
    def _check_policy(self, d):
        """OCI's checks of a new autoscaling configuration (400 InvalidParameter)."""
        if (d.cool_down_in_seconds or 300) < 300:
            raise ApiError(400, "InvalidParameter", f"coolDownInSeconds must be at least 300, "
                                                     f"got {d.cool_down_in_seconds}")
        for pol in d.policies:
            for r in pol.rules or []:
                metric = r.metric
                if metric.metric_source == "CUSTOM_QUERY":
                    if not NAMESPACE_RX.match(metric.namespace or ""):
                        raise ApiError(400, "InvalidParameter", f"Invalid namespace '{metric.namespace}'")
                    if not MQL_RX.match(metric.query or ""):
                        raise ApiError(400, "InvalidParameter", f"Invalid query: '{metric.query}' is not a "
                                                                 f"valid MQL threshold expression")
                    if metric.pending_duration not in (None, "PT1H") and not (
                            re.match(r"^PT(\d+)M$", metric.pending_duration)
                            and 3 <= int(metric.pending_duration[2:-1]) <= 60):
                        raise ApiError(400, "InvalidParameter", f"pendingDuration {metric.pending_duration} must "
                                                                 f"be PT3M to PT1H")
                elif metric.metric_source in (None, "COMPUTE_AGENT"):
                    if getattr(metric, "metric_type", None) not in ("CPU_UTILIZATION", "MEMORY_UTILIZATION") \
                            or getattr(metric, "threshold", None) is None:
                        raise ApiError(400, "InvalidParameter", "a COMPUTE_AGENT rule needs a threshold and a "
                                                                 "metricType CPU_UTILIZATION or MEMORY_UTILIZATION")
                else:
                    raise ApiError(400, "InvalidParameter", f"unknown metricSource {metric.metric_source}")

    def evaluate_autoscaling(self):
        """Evaluate every enabled CUSTOM_QUERY rule over the metrics posted within its window, as OCI's
        alarms would, and change the pool by the first rule that fires (out before in). Returns the steps."""
        taken = []
        with self.lock:
            for a in self.of("AutoScalingConfiguration"):
                if not a.is_enabled:
                    continue
                pool = self.get(a.resource.id, "InstancePool")
                for pol in a.policies:
                    for r in sorted(pol.rules, key=lambda r: -r.action.value):
                        if getattr(r.metric, "metric_source", None) != "CUSTOM_QUERY" \
                                or not self._fires(r.metric.namespace, a.compartment_id, r.metric.query):
                            continue
                        size = min(pol.capacity.max, max(pol.capacity.min, pool.size + r.action.value))
                        if size != pool.size and pool.lifecycle_state == "RUNNING":
                            pool.size = size
                            self._resize(pool, "UpdateInstancePool")
                            taken.append((a.id, r.action.value))
                            self.scaled.append((a.id, r.action.value))
                        break
        return taken

    def _fires(self, namespace, compartment_id, query):
        m = MQL_RX.match(query)
        window = int(m["n"]) * (60 if m["unit"] == "m" else 3600)
        want = dict(re.findall(r'([A-Za-z][\w.-]*)\s*=\s*"([^"]*)"', m["dims"] or ""))
        values = [x["value"] for x in self.metrics if x["namespace"] == namespace and x["name"] == m["metric"]
                  and x["compartment_id"] == compartment_id and (now() - x["timestamp"]).total_seconds() <= window
                  and all(x["dimensions"].get(k) == v for k, v in want.items())]
        if not values:
            return False  # no data: an alarm stays OK, nothing scales
        stat = {"mean": lambda v: sum(v) / len(v), "avg": lambda v: sum(v) / len(v), "max": max, "min": min,
                "sum": sum, "count": len, "last": lambda v: v[-1]}.get(m["stat"], lambda v: sum(v) / len(v))(values)
        limit = float(m["value"])
        return {">": stat > limit, ">=": stat >= limit, "<": stat < limit, "<=": stat <= limit,
                "==": stat == limit, "!=": stat != limit}[m["op"]]

    def create_autoscaling(self, q, parse):
        d = parse("CreateAutoScalingConfigurationDetails")
        self.get(d.resource.id, "InstancePool")
        self._check_policy(d)
        policies = [build(asm.ThresholdPolicy, p, id=uuid.uuid4().hex[:8], time_created=now(),
                          rules=[build(asm.Condition, r, id=uuid.uuid4().hex[:8]) for r in p.rules])
                    for p in d.policies]
        return self.new_id("AutoScalingConfiguration", build(
            asm.AutoScalingConfiguration, d, policies=policies, time_created=now(),
            min_resource_count=policies[0].capacity.min, max_resource_count=policies[0].capacity.max))

    def update_autoscaling(self, q, parse, aid):
        a, d = self.get(aid, "AutoScalingConfiguration"), parse("UpdateAutoScalingConfigurationDetails")
        for k in ("is_enabled", "cool_down_in_seconds", "display_name"):
            if getattr(d, k) is not None:
                setattr(a, k, getattr(d, k))
        return a

    def delete_autoscaling(self, q, parse, aid):
        self.get(aid, "AutoScalingConfiguration")
        del self.res[aid], self.kind[aid]
        return 204, None, {}
