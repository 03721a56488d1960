"""Issue 16 on OCI: the nodes' load publisher (roles/monitoring/files/ampere_llm_metrics.py) and demand
autoscaling, against the OCI stand-in.

The publisher signs with an API key here: an instance principal needs OCI's metadata service and
auth service, which cannot be reached. Both signers are the SDK's (InstancePrincipalsSecurityTokenSigner
is a Signer with a fetched key), so the request the stand-in verifies is built by the same code path.
"""
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import oci
import pytest
from ocitest import COMPARTMENT, ROOT, task_results

PUBLISHER = ROOT / "collections/ansible_collections/ampere/llm/roles/monitoring/files/ampere_llm_metrics.py"
INSTANCE = "ocid1.instance.oc1.standin.node1"
sys.path.insert(0, str(PUBLISHER.parent))
import ampere_llm_metrics as pub


class Local:
    """A tiny HTTP server on 127.0.0.1 answering GETs with `body()`: the instance metadata service, or
    a node's /metrics rendered by the service's own Metrics class."""

    def __init__(self, body):
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                data = outer.body()
                self.send_response(200)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
        self.body = body
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def imds():
    s = Local(lambda: json.dumps({"id": INSTANCE, "compartmentId": COMPARTMENT}).encode())
    yield s
    s.close()


@pytest.fixture
def node_metrics():
    """A node's /metrics as the service renders it; `load` sets slots busy / total and queue depth. Each read
    adds 20 generated tokens and one first token at 0.3 s (so tokens/s and TTFT have something to show)."""
    from ampere_llm_server.metrics import Metrics

    m = Metrics()
    m.slots_total.set(2)

    def render():
        m.completion_tokens.inc(20)
        m.ttft.observe(0.3)
        return m.render()
    s = Local(render)

    def load(busy, queue):
        m.slots_busy.set(busy)
        m.queue_depth.set(queue)
    s.load = load
    yield s
    s.close()


def publisher_config(tmp_path, oci_key, endpoint, imds, metrics_url, **extra):
    cfg = tmp_path / "metrics.json"
    cfg.write_text(json.dumps({"auth": "api_key", "config_file": oci_key["config_file"], "endpoint": endpoint,
                               "metadata_url": imds.url, "metrics_url": metrics_url, "pool": "ampere-llm-pool",
                               "sample_interval": 0.2, "post_interval": 0.5, **extra}))
    return cfg


def run_once(cfg):
    return subprocess.run([sys.executable, str(PUBLISHER), "--config", str(cfg), "--once"],
                          capture_output=True, text=True, timeout=60)


def test_demand_policy_by_default_and_the_pool_follows_what_the_nodes_post(standin, ansible, oci_key, tmp_path,
                                                                          imds, node_metrics):
    image = standin.add_image(COMPARTMENT, "ampere-llm-v1")
    rc, out, log = ansible(ROOT / "playbooks/pool.yml", {"image_id": image})
    assert rc == 0, log
    (asc,) = standin.of("AutoScalingConfiguration")
    (pool,) = standin.of("InstancePool")
    rules = {r.action.value: r.metric for r in asc.policies[0].rules}
    assert {m.metric_source for m in rules.values()} == {"CUSTOM_QUERY"}
    assert rules[1].query == 'queue_depth[1m]{pool = "ampere-llm-pool"}.grouping().mean() > 0.5'
    assert rules[-1].query == 'slot_saturation[1m]{pool = "ampere-llm-pool"}.grouping().mean() < 0.3'
    assert rules[1].namespace == "ampere_llm" and asc.cool_down_in_seconds == 300
    assert task_results(out, "Rights, availability domain, shape and limits (reads only)")["checked"][
        "policies granting the nodes use metrics"] == "ok"
    # The nodes' user data names the pool for the publisher and starts it.
    import base64

    import yaml
    cfg = standin.res[pool.instance_configuration_id]
    ud = yaml.safe_load(base64.b64decode(cfg.instance_details.launch_details.metadata["user_data"]))
    assert "AMPERE_LLM_METRICS_POOL=ampere-llm-pool" in {f["path"]: f for f in ud["write_files"]}[
        "/etc/systemd/system/ampere-llm-metrics.service.d/10-pool.conf"]["content"]
    assert any("enable --now ampere-llm-metrics.service" in str(c) and '"demand" = demand' in str(c)
               for c in ud["runcmd"])

    # Requests wait on the node: the real publisher posts, signed; OCI's alarm fires; one node more.
    conf = publisher_config(tmp_path, oci_key, standin.url, imds, node_metrics.url)
    node_metrics.load(busy=2, queue=3)
    p = run_once(conf)
    assert p.returncode == 0, p.stdout + p.stderr
    posted = {(m["name"], m["value"]) for m in standin.metrics}
    assert {("slot_saturation", 1.0), ("queue_depth", 3.0)} <= posted, posted
    assert {m["dimensions"]["resourceId"] for m in standin.metrics} == {INSTANCE}
    assert {m["dimensions"]["pool"] for m in standin.metrics} == {"ampere-llm-pool"}
    tps = [v for n, v in posted if n == "tokens_per_second"]
    ttft = [v for n, v in posted if n == "ttft_p50_seconds"]
    assert tps and tps[0] > 0 and ttft and 0.25 <= ttft[0] <= 0.5, posted
    print(f"posted: {sorted(posted)}")
    assert standin.evaluate_autoscaling() == [(asc.id, 1)] and pool.size == 3

    # A minute later the slots sit idle: one node goes, drained first (pre-termination action).
    standin.metrics.clear()
    node_metrics.load(busy=0, queue=0)
    assert run_once(conf).returncode == 0
    standin.tick()  # the scale-out's work request is done by now (the pool is RUNNING again)
    assert standin.evaluate_autoscaling() == [(asc.id, -1)] and pool.size == 2
    assert [e for e in standin.events if e[1] == "pre-termination"], "the leaving node is drained before it goes"

    # CPU stays an option: the same configuration is made again with a COMPUTE_AGENT rule.
    rc, out, log = ansible(ROOT / "playbooks/pool.yml", {"image_id": image, "autoscaling_metric": "cpu"})
    assert rc == 0, log
    (asc,) = standin.of("AutoScalingConfiguration")
    assert {r.metric.metric_source for r in asc.policies[0].rules} == {"COMPUTE_AGENT"}


@pytest.mark.parametrize("override, expect", [
    ({"scale_out_query": 'queue_depth[1m]{pool = "x"}.mean() >'}, "expected a trigger"),
    ({"scale_in_query": "slot_saturation{pool = \"x\"}.mean() < 0.3"}, "expected an interval"),
    ({"node_metrics_namespace": "oci_ampere"}, "may not start with oci_"),
])
def test_malformed_mql_or_namespace_fails_before_anything_is_created(standin, ansible, override, expect):
    image = standin.add_image(COMPARTMENT, "ampere-llm-v1")
    rc, out, log = ansible(ROOT / "playbooks/pool.yml", {"image_id": image, **override})
    assert rc != 0
    msg = task_results(out, "Rights, availability domain, shape and limits (reads only)")["msg"]
    assert expect in msg and "Nothing was created" in msg, msg
    assert standin.mutations() == []


def test_missing_node_metrics_policy_fails_before_anything_is_created(standin, ansible):
    standin.policies = ["Allow group ampere-llm-operators to manage load-balancers in compartment ampere-llm"]
    image = standin.add_image(COMPARTMENT, "ampere-llm-v1")
    rc, out, log = ansible(ROOT / "playbooks/pool.yml", {"image_id": image})
    assert rc != 0
    msg = task_results(out, "Rights, availability domain, shape and limits (reads only)")["msg"]
    assert "to use metrics in compartment ampere-llm" in msg and "dynamic group" in msg, msg
    assert standin.mutations() == []


def test_the_standin_refuses_metrics_as_oci_does(standin, oci_key):
    """OCI's rules, through the real SDK (signed): NON_ATOMIC keeps the good objects and names the bad."""
    from oci.monitoring.models import Datapoint, MetricDataDetails, PostMetricDataDetails

    client = oci.monitoring.MonitoringClient(oci.config.from_file(oci_key["config_file"]),
                                             service_endpoint=standin.url)
    t = datetime.now(timezone.utc)

    def md(ns="ampere_llm", name="queue_depth", dims=None, when=t):
        return MetricDataDetails(namespace=ns, compartment_id=COMPARTMENT, name=name,
                                 dimensions={"resourceId": INSTANCE} if dims is None else dims,
                                 datapoints=[Datapoint(timestamp=when, value=1.0)])
    bad = [md(ns="oci_llm"), md(ns="Ampere-LLM"), md(when=t - timedelta(hours=3)),
           md(when=t + timedelta(minutes=15)), md(dims={}), md(dims={f"d{i}": "v" for i in range(21)}),
           md(name="9lives")]
    answer = client.post_metric_data(PostMetricDataDetails(metric_data=[md(), *bad])).data
    assert answer.failed_metrics_count == len(bad)
    messages = " | ".join(f.message for f in answer.failed_metrics)
    for words in ("Invalid namespace 'oci_llm'", "Invalid namespace 'Ampere-LLM'", "2 hours in the past",
                  "10 minutes in the future", "1 to 20 dimensions, got 0", "got 21", "Invalid metric name"):
        assert words in messages, messages
    assert len(standin.metrics) == 1
    with pytest.raises(oci.exceptions.ServiceError) as e:  # ATOMIC: one bad object refuses the call
        client.post_metric_data(PostMetricDataDetails(metric_data=[md(), bad[0]], batch_atomicity="ATOMIC"))
    assert (e.value.status, e.value.code) == (400, "InvalidParameter")
    with pytest.raises(oci.exceptions.ServiceError) as e:  # more than 50 metric streams in one call
        many = [md(dims={"resourceId": f"i{i}"}) for i in range(51)]
        client.post_metric_data(PostMetricDataDetails(metric_data=many))
    assert e.value.status == 400 and "50 unique metric streams" in e.value.message
    unsigned = urllib.request.Request(standin.url + "/20180401/metrics", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(unsigned)
    assert e.value.code == 401

    # The publisher with a namespace OCI refuses: logged, the call fails, nothing kept.
    pub_ = pub.Publisher(dict(pub.DEFAULTS, namespace="oracle_llm"), client, COMPARTMENT, {"resourceId": INSTANCE})
    pub_._add("queue_depth", 1, datetime.now(timezone.utc))
    assert pub_.post() is False and len(standin.metrics) == 1


def test_the_standin_refuses_malformed_custom_queries_like_oci(standin, oci_key):
    """What OCI says to a malformed policy (400 InvalidParameter), asked directly through the SDK: the
    module's own check stops pool.yml before this, so only the stand-in's side is seen here."""
    from oci.autoscaling import models as m

    client = oci.autoscaling.AutoScalingClient(oci.config.from_file(oci_key["config_file"]),
                                               service_endpoint=standin.url)
    pool = standin.new_id("InstancePool", oci.core.models.InstancePool(compartment_id=COMPARTMENT, size=1,
                                                                       lifecycle_state="RUNNING"))

    def create(query="queue_depth[1m].mean() > 1", cool_down=300, pending="PT3M"):
        rule = m.CreateConditionDetails(action=m.Action(type="CHANGE_COUNT_BY", value=1), metric=m.CustomMetric(
            metric_source="CUSTOM_QUERY", namespace="ampere_llm", query=query, pending_duration=pending))
        return client.create_auto_scaling_configuration(m.CreateAutoScalingConfigurationDetails(
            compartment_id=COMPARTMENT, cool_down_in_seconds=cool_down, resource=m.InstancePoolResource(id=pool.id),
            policies=[m.CreateThresholdPolicyDetails(capacity=m.Capacity(min=1, max=2, initial=1), rules=[rule])]))
    for kw in ({"query": "queue_depth[1m].mean()"}, {"query": "queue_depth.mean() > 1"}, {"cool_down": 60},
               {"pending": "PT1M"}):
        with pytest.raises(oci.exceptions.ServiceError) as e:
            create(**kw)
        assert (e.value.status, e.value.code) == (400, "InvalidParameter"), kw
    assert create().status == 200


def test_serving_is_untouched_when_posting_fails(standin, oci_key, tmp_path, imds, run_server, tiny_model):
    """The real service, and two publishers beside it: one whose endpoint is down, one whose principal has
    no `use metrics` (404). Both log and keep going; every request is served."""
    server = run_server(tiny_model, "--parallel", "2")
    standin.denied = {"metrics"}
    expected = {"down": "cannot reach OCI Monitoring", "denied": "OCI refused the metrics: 404 NotAuthorizedOrNotFound"}
    procs = []
    for name, endpoint in (("down", "http://127.0.0.1:9"), ("denied", standin.url)):
        (tmp_path / name).mkdir()
        cfg = publisher_config(tmp_path / name, oci_key, endpoint, imds, server.url + "/metrics")
        with open(tmp_path / name / "log", "w") as out:
            procs.append((name, subprocess.Popen([sys.executable, str(PUBLISHER), "--config", str(cfg)],
                                                 stdout=out, stderr=subprocess.STDOUT, text=True,
                                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})))

    def logs() -> dict[str, str]:
        return {name: (tmp_path / name / "log").read_text() for name, _ in procs}
    try:
        # Both publishers have tried and failed (their start, the oci SDK's import, can take
        # seconds on a busy box); they go on failing every half second while the node serves.
        deadline = time.monotonic() + 60
        while not all(expected[name] in text for name, text in logs().items()):
            assert time.monotonic() < deadline, logs()
            time.sleep(0.2)
        statuses = []
        for i in range(8):
            req = urllib.request.Request(server.url + "/generate", method="POST",
                                         data=json.dumps({"prompt": f"hello {i}", "max_tokens": 8,
                                                          "stream": False}).encode(),
                                         headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                statuses.append(r.status)
        assert statuses == [200] * 8
        assert server.get("/readyz")[0] == 200
        assert all(p.poll() is None for _, p in procs), logs()  # still running: never gave up
    finally:
        for _, p in procs:
            p.terminate()
            p.wait(timeout=10)
    assert "use metrics" in logs()["denied"]
    print(logs())


def test_ttft_median_from_histogram_deltas():
    before = {0.1: 1, 0.5: 1, 1.0: 1, float("inf"): 1}
    after = {0.1: 1, 0.5: 3, 1.0: 5, float("inf"): 5}  # four new: two in (0.1, 0.5], two in (0.5, 1]
    assert pub.quantile(0.5, before, after) == pytest.approx(0.5)
    assert pub.quantile(0.5, after, after) is None            # nothing new: no datapoint
    assert pub.quantile(0.5, after, before) is None           # counters went back: the service restarted
