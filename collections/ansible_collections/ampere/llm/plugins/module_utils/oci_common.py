# What every ampere.llm OCI module shares: auth, clients, error messages, waiting, find-or-create.
#
# The oracle.oci collection is not used: the modules talk to the oci Python SDK directly, so the
# only control-node dependency is `pip install oci`. Credentials come from the standard config
# file (~/.oci/config) or from instance principals; no module option ever carries key material,
# and nothing here puts a credential into a result, a warning or an error.
from __future__ import annotations

import hashlib
import json
import time
import uuid

try:
    import oci
    from oci.exceptions import ServiceError
    HAS_OCI = True
    # The SDK's models, for the modules to import from here: none of them needs an import guard of its own.
    autoscaling_models, core_models, lb_models = oci.autoscaling.models, oci.core.models, oci.load_balancer.models
except ImportError:  # reported by OciModule with a fix, not as a traceback
    HAS_OCI = False
    oci = autoscaling_models = core_models = lb_models = None
    ServiceError = Exception

from ansible.module_utils.basic import AnsibleModule, env_fallback

# Resources in these states are gone (or going) and never count as "the existing one".
GONE = {"TERMINATED", "TERMINATING", "DELETED", "DELETING", "FAILED"}

COMMON_ARGS = dict(
    compartment_id=dict(type="str", required=True),
    auth_type=dict(type="str", default="api_key", choices=["api_key", "instance_principal"],
                   fallback=(env_fallback, ["OCI_CLI_AUTH"])),
    config_file=dict(type="path", default="~/.oci/config", fallback=(env_fallback, ["OCI_CONFIG_FILE"])),
    config_profile=dict(type="str", default="DEFAULT", fallback=(env_fallback, ["OCI_CONFIG_PROFILE"])),
    region=dict(type="str", fallback=(env_fallback, ["OCI_REGION"])),
    # TEST ONLY: send every call to this base URL (the local OCI stand-in of tests/oci) instead
    # of the region's public endpoints.
    endpoint=dict(type="str", fallback=(env_fallback, ["AMPERE_LLM_OCI_ENDPOINT"])),
    wait_timeout=dict(type="int", default=1800),
    poll_interval=dict(type="float", default=5.0, fallback=(env_fallback, ["AMPERE_LLM_OCI_POLL_INTERVAL"])),
)
# The `state` option of every module that manages a resource (what absent deletes is in each one's docs).
STATE = dict(type="str", default="present", choices=["present", "absent"])


class OciError(Exception):
    """A failure already phrased for the operator: what happened and what to do about it."""


def explain(err, what):
    """Turn an SDK ServiceError into one sentence that says what to fix (never echoing credentials)."""
    status, code, message = getattr(err, "status", None), getattr(err, "code", ""), getattr(err, "message", str(err))
    where = f"{what}: OCI answered {status} {code}"
    if status == 401:
        return (f"{where}. The request signature was rejected: check user, tenancy, fingerprint and "
                f"key_file in the OCI config profile, and that this public key is uploaded to the user "
                f"(or, with instance principals, that a dynamic group policy covers this instance).")
    if status == 404:
        return (f"{where} ({message}). The OCID is wrong, or your IAM policies do not allow this "
                f"operation in that compartment.")
    if status == 429 or code in ("LimitExceeded", "QuotaExceeded") or "limit" in code.lower():
        return (f"{where}: {message}. A service limit, compartment quota or rate limit stops this: "
                f"ask for a limit increase (Console > Governance > Limits, Quotas and Usage), free "
                f"capacity, or choose a smaller size or another shape.")
    return f"{where}: {message}"


class Oci:
    """Authenticated SDK clients plus the few patterns every module repeats."""

    def __init__(self, params, warn=lambda msg: None):
        self.params = params
        self.warn = warn
        self.poll = max(0.01, params["poll_interval"])
        self.timeout = params["wait_timeout"]
        self._clients = {}
        if params["auth_type"] == "instance_principal":
            try:
                self.signer = oci.auth.signers.InstancePrincipalsSecurityTokenSigner()
            # the metadata service is only there on an OCI instance; the SDK raises anything from a
            # connection error to a KeyError there, and every one means the same: report it
            except Exception as e:  # noqa: BLE001
                raise OciError(f"instance principal authentication failed ({type(e).__name__}): run "
                               f"on an OCI instance in a dynamic group, or use auth_type=api_key") from None
            self.config = {"region": params["region"] or self.signer.region}
        else:
            self.signer = None
            try:
                self.config = oci.config.from_file(params["config_file"], params["config_profile"])
                if params["region"]:
                    self.config["region"] = params["region"]
                oci.config.validate_config(self.config)
            except oci.exceptions.ConfigFileNotFound:
                raise OciError(f"OCI config file {params['config_file']} not found: create it with "
                               f"`oci setup config` (or point config_file / OCI_CONFIG_FILE at it)") from None
            except oci.exceptions.ProfileNotFound:
                raise OciError(f"profile [{params['config_profile']}] is missing from "
                               f"{params['config_file']}") from None
            except oci.exceptions.InvalidConfig as e:
                # InvalidConfig names the bad keys (e.g. {'fingerprint': 'malformed'}), never values.
                raise OciError(f"OCI config profile [{params['config_profile']}] in "
                               f"{params['config_file']} is invalid: {e}") from None
            except (OSError, ValueError) as e:
                raise OciError(f"cannot use the key of profile [{params['config_profile']}]: "
                               f"{type(e).__name__}") from None

    def client(self, cls):
        """One client per SDK class, each with the retry strategy; the endpoint override is for the
        tests' local stand-in only."""
        if cls not in self._clients:
            kw = {"retry_strategy": self.retry_strategy}
            if self.signer is not None:
                kw["signer"] = self.signer
            if self.params.get("endpoint"):
                kw["service_endpoint"] = self.params["endpoint"]
            self._clients[cls] = cls(self.config, **kw)
        return self._clients[cls]

    @property
    def retry_strategy(self):
        """The SDK's own retry strategy (DEFAULT_RETRY_STRATEGY's settings: 8 attempts within 600 s,
        exponential back-off with jitter, timeouts, connection errors, 429 and every 5xx but 501),
        retrying 409 Conflict too: OCI answers it, like IncorrectState, while a load balancer runs
        another work request or a pool is scaling. Creates are safe to retry: call() sends each one
        with an opc-retry-token, so a create retried after a lost answer never makes a second resource.
        The back-off base is 1 s as in the SDK, shorter only when poll_interval is (the tests)."""
        base = min(1.0, self.poll)
        return oci.retry.RetryStrategyBuilder(
            retry_base_sleep_time_seconds=base, decorrelated_jitter=base,
        ).add_max_attempts(8).add_total_elapsed_time(600).add_service_error_check(
            service_error_retry_config={-1: [], 409: ["IncorrectState", "LockConflict", "Conflict"], 429: []},
            service_error_retry_on_any_5xx=True,
        ).get_retry_strategy()

    # The SDK clients the modules use, each made on first use.
    compute = property(lambda self: self.client(oci.core.ComputeClient))
    network = property(lambda self: self.client(oci.core.VirtualNetworkClient))
    management = property(lambda self: self.client(oci.core.ComputeManagementClient))
    lb = property(lambda self: self.client(oci.load_balancer.LoadBalancerClient))
    autoscaling = property(lambda self: self.client(oci.autoscaling.AutoScalingClient))
    identity = property(lambda self: self.client(oci.identity.IdentityClient))
    work_requests = property(lambda self: self.client(oci.work_requests.WorkRequestClient))

    def call(self, fn, *args, what=None, **kwargs):
        """Call an SDK operation (the client's retry strategy retries what is worth it). Every create
        carries an opc-retry-token, the same one on each retry of this call. What still fails
        becomes an OciError that says what to fix."""
        what = what or fn.__name__.replace("_", " ")
        if fn.__name__.startswith("create_") and "opc_retry_token" not in kwargs:
            kwargs["opc_retry_token"] = uuid.uuid4().hex
        try:
            return fn(*args, **kwargs)
        except ServiceError as e:
            raise OciError(explain(e, what)) from None
        except oci.exceptions.RequestException as e:
            raise OciError(f"{what}: cannot reach OCI ({type(e).__name__}); check the region "
                           f"and the network") from None

    def list_all(self, fn, *args, **kwargs):
        return self.call(oci.pagination.list_call_get_all_results, fn, *args,
                         what=fn.__name__.replace("_", " "), **kwargs).data

    def find(self, fn, *args, name, **kwargs):
        """The live resource called `name` (filtered by OCI, then here), or None; two is an error."""
        found = [r for r in self.list_all(fn, *args, display_name=name, **kwargs)
                 if getattr(r, "display_name", None) == name and getattr(r, "lifecycle_state", "") not in GONE]
        if len(found) > 1:
            raise OciError(f"{len(found)} resources are named {name!r}: names must be unique for "
                           f"these modules to know which one they manage; rename or delete the extras")
        return found[0] if found else None

    def until(self, probe):
        """Call `probe()` every poll_interval until it returns (done, value) with done true, and return
        value; at wait_timeout, an OciError whose message is the last value (what was still awaited)."""
        deadline = time.monotonic() + self.timeout
        while True:
            done, value = probe()
            if done:
                return value
            if time.monotonic() > deadline:
                raise OciError(f"{value} (wait_timeout)")
            time.sleep(self.poll)

    def wait(self, get, rid, ready, what, field="lifecycle_state"):
        """Poll `get(rid)` until its state is in `ready`; fail fast on a failed state or at the timeout."""
        def probe():
            res = self.call(get, rid).data
            state = getattr(res, field)
            if state in GONE - set(ready):
                raise OciError(f"{what} {rid} went to {state} while waiting for {'/'.join(ready)}")
            return state in ready, res if state in ready else f"{what} {rid} still {state} after {self.timeout}s"
        return self.until(probe)

    def delete(self, delete_fn, get_fn, rid, what):
        """Delete `rid` and wait until OCI reports it gone (TERMINATED/DELETED, or 404)."""
        self.call(delete_fn, rid)

        def probe():
            try:
                state = getattr(get_fn(rid).data, "lifecycle_state", None)
            except ServiceError as e:
                if e.status == 404:
                    return True, None
                raise OciError(explain(e, f"wait for {what} deletion")) from None
            return state in ("TERMINATED", "DELETED"), f"{what} {rid} still {state} {self.timeout}s after deleting it"
        self.until(probe)

    def wait_lb_work(self, response, what):
        """Load balancer changes are asynchronous: wait for the work request the call returned."""
        wr_id = response.headers.get("opc-work-request-id")  # (`response` of the SDK call)
        wr = self.wait(self.lb.get_work_request, wr_id, {"SUCCEEDED", "FAILED"}, f"{what} work request")
        if wr.lifecycle_state == "FAILED":
            errs = "; ".join(e.message for e in (wr.error_details or []))
            raise OciError(f"{what} failed: {errs or wr.message}")
        return wr

    def wait_compute_work(self, response, what, resource_id=None, since=None):
        """Instance pool creates and updates are accepted at once and launch later: a launch that
        fails ("Out of host capacity.", a service limit) fails only in the compute work request.
        Wait for it and fail with OCI's own words. The work request is the one the call answered
        with (opc-work-request-id) or, if OCI sent none, the newest one on `resource_id` since `since`."""
        wr_id = response.headers.get("opc-work-request-id")
        if not wr_id and resource_id:
            found = [w for w in self.list_all(self.work_requests.list_work_requests,
                                              self.params.get("compartment_id"), resource_id=resource_id)
                     if since is None or w.time_accepted >= since]
            wr_id = max(found, key=lambda w: w.time_accepted).id if found else None
        if not wr_id:
            return None
        wr = self.wait(self.work_requests.get_work_request, wr_id, {"SUCCEEDED", "FAILED", "CANCELED"},
                       f"{what} work request", field="status")
        if wr.status != "SUCCEEDED":
            errs = self.list_all(self.work_requests.list_work_request_errors, wr_id)
            raise OciError(f"{what} failed: OCI says {'; '.join(f'{e.code}: {e.message}' for e in errs) or wr.status} "
                           f"(work request {wr_id}). {advice(errs)}".strip())
        return wr


def advice(errors):
    """What to do about the asynchronous launch errors OCI reports most."""
    text = " ".join(f"{e.code} {e.message}" for e in errors).lower()
    if "capacity" in text:
        return ("OCI has no free hosts of this shape there now: choose another availability_domain, "
                "another shape, a smaller size, or try again later.")
    if "limit" in text or "quota" in text:
        return ("A service limit or compartment quota stops it: ask for a limit increase "
                "(Console > Governance > Limits, Quotas and Usage) or size down.")
    return ""


def to_dict(model):
    return oci.util.to_dict(model)


def spec_hash(spec):
    """A short, stable digest of a desired spec: it names immutable resources by what they hold."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def drift(current, desired):
    """The keys of `desired` whose value differs in `current` (both plain dicts)."""
    return {k: {"before": current.get(k), "after": v} for k, v in desired.items() if current.get(k) != v}


class OciModule(AnsibleModule):
    """AnsibleModule with the common OCI options and a ready `self.oci`."""

    def __init__(self, argument_spec, **kwargs):
        super().__init__(argument_spec={**COMMON_ARGS, **argument_spec}, supports_check_mode=True, **kwargs)
        if not HAS_OCI:
            self.fail_json(msg="the oci Python SDK is required on the control node: "
                               "pip install oci (see requirements-dev.txt for the tested version)")
        try:
            self.oci = Oci(self.params, warn=self.warn)
        except OciError as e:
            self.fail_json(msg=str(e))

    def run(self, body):
        """Run `body()` -> result dict; OciErrors become a failed task with the explanation."""
        try:
            result = body()
        except OciError as e:
            self.fail_json(msg=str(e))
        self.exit_json(**result)

    def result(self, changed, resource=None, before=None, after=None, **extra):
        out = dict(changed=changed, **extra)
        if resource is not None:
            out.update(resource)
        if self._diff:
            out["diff"] = dict(before=before or {}, after=after or {})
        return out
