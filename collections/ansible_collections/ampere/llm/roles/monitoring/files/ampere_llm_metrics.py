"""ampere-llm-metrics: this node's load, posted to OCI Monitoring for demand autoscaling.

Every `sample_interval` seconds it reads the service's own /metrics (127.0.0.1, Prometheus text);
every `post_interval` seconds it posts what it read with PostMetricData to the region's
telemetry-ingestion endpoint, in namespace `ampere_llm`, each metric dimensioned by `pool` (the
instance pool's display name, from the node's user data) and `resourceId` (this instance's OCID,
from the instance metadata service), signed by the instance principal: no key on the image.

Metrics (one datapoint per sample unless said otherwise):
  slot_saturation    slots busy / slots total (0..1): the share of the node's decoding capacity in use
  queue_depth        requests waiting for a slot (each will wait; more than --max-queue get a 503)
  tokens_per_second  generated tokens per second since the previous sample
  ttft_p50_seconds   median time to first token of the requests that got one since the last post
                     (queue wait + prefill: the service has no separate queue-wait histogram); one
                     datapoint per post, none when no request started

It runs in a unit of its own, beside the service and never in a request's path: a failed read or
post is logged and the next round tries again; the service does not know it exists. `--once` takes
two samples and posts (for a test, or by hand).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone

log = logging.getLogger("ampere-llm-metrics")

P = "ampere_llm_"
DEFAULTS = {
    "namespace": "ampere_llm",
    "metrics_url": "http://127.0.0.1:8000/metrics",
    "sample_interval": 10,
    "post_interval": 60,
    "auth": "instance_principal",
    # OCI's instance metadata service (v2 asks for this header; v1 is often disabled).
    "metadata_url": "http://169.254.169.254/opc/v2/instance/",
    "pool": "",
    "endpoint": "",
}


@dataclass
class Sample:
    at: float
    busy: float
    total: float
    queue: float
    tokens: float
    ttft: dict[float, float] = field(default_factory=dict)  # bucket upper bound -> cumulative count


def parse(text: str, at: float) -> Sample:
    """The figures the publisher needs from the service's Prometheus text (prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    val: dict[str, float] = {}
    ttft: dict[float, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == P + "time_to_first_token_seconds_bucket":
                ttft[float(s.labels["le"])] = s.value
            elif not s.labels:
                val[s.name] = s.value
    return Sample(at=at, busy=val.get(P + "slots_busy", 0.0), total=val.get(P + "slots_total", 0.0),
                  queue=val.get(P + "queue_depth", 0.0), tokens=val.get(P + "completion_tokens_total", 0.0),
                  ttft=ttft)


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """The q-quantile of the observations between two readings of a cumulative histogram, linear
    within a bucket (Prometheus' histogram_quantile); None without observations."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0 or any(c < 0 for c in counts):  # nothing new, or the service restarted
        return None
    rank, lower, below = q * counts[-1], 0.0, 0.0
    for bound, cum in zip(bounds, counts):
        if cum >= rank:
            if bound == float("inf"):
                return lower  # beyond the last finite bucket: its bound is the best answer
            return lower + (bound - lower) * ((rank - below) / (cum - below) if cum > below else 1.0)
        lower, below = bound, cum
    return lower


class Publisher:
    """Samples the service and posts to Monitoring. `client` is an oci.monitoring.MonitoringClient."""

    def __init__(self, cfg: dict, client, compartment_id: str, dimensions: dict[str, str]):
        self.cfg, self.client = cfg, client
        self.compartment_id, self.dimensions = compartment_id, dimensions
        self.points: dict[str, list] = {}
        self.prev: Sample | None = None
        self.at_post: Sample | None = None  # the reading the next TTFT median starts from

    def _add(self, name: str, value: float, when: datetime) -> None:
        from oci.monitoring.models import Datapoint
        self.points.setdefault(name, []).append(Datapoint(timestamp=when, value=float(value)))

    def sample(self) -> bool:
        """Read /metrics once; False (logged) when the service does not answer."""
        try:
            with urllib.request.urlopen(self.cfg["metrics_url"], timeout=5) as r:
                s = parse(r.read().decode(), time.monotonic())
        except (OSError, ValueError) as e:  # refused, timed out, mid-restart, garbled: try next round
            log.warning("cannot read %s: %s", self.cfg["metrics_url"], e)
            return False
        now = datetime.now(timezone.utc)
        if s.total > 0:
            self._add("slot_saturation", s.busy / s.total, now)
        self._add("queue_depth", s.queue, now)
        if self.prev is not None and s.at > self.prev.at and s.tokens >= self.prev.tokens:
            self._add("tokens_per_second", (s.tokens - self.prev.tokens) / (s.at - self.prev.at), now)
        if self.at_post is None:
            self.at_post = s
        self.prev = s
        return True

    def metric_data(self) -> list:
        from oci.monitoring.models import MetricDataDetails
        if self.prev is not None and self.at_post is not None:
            p50 = quantile(0.5, self.at_post.ttft, self.prev.ttft)
            if p50 is not None:
                self._add("ttft_p50_seconds", p50, datetime.now(timezone.utc))
            self.at_post = self.prev
        return [MetricDataDetails(namespace=self.cfg["namespace"], compartment_id=self.compartment_id, name=name,
                                  dimensions=dict(self.dimensions), datapoints=points,
                                  metadata={"unit": "seconds" if name.endswith("_seconds") else "ratio"
                                            if name == "slot_saturation" else "count"})
                for name, points in sorted(self.points.items())]

    def post(self) -> bool:
        """Post what was sampled since the last post; False (logged) when OCI refused any of it.
        Datapoints are not kept for a retry: the next minute's are what autoscaling needs."""
        import oci
        data = self.metric_data()
        self.points = {}
        if not data:
            return False
        try:
            answer = self.client.post_metric_data(oci.monitoring.models.PostMetricDataDetails(metric_data=data)).data
        except oci.exceptions.ServiceError as e:
            hint = (" (is this instance in a dynamic group with `use metrics` in the compartment?)"
                    if e.status in (401, 404) else "")
            log.error("OCI refused the metrics: %s %s: %s%s", e.status, e.code, e.message, hint)
            return False
        except (oci.exceptions.RequestException, OSError) as e:  # unreachable, timed out, TLS
            log.error("cannot reach OCI Monitoring: %s", type(e).__name__)
            return False
        for failed in answer.failed_metrics or []:
            log.error("OCI refused metric %s: %s", failed.metric_data.name, failed.message)
        if answer.failed_metrics_count:
            return False
        log.info("posted %s", ", ".join(f"{d.name}={d.datapoints[-1].value:.3g}" for d in data))
        return True


def instance_identity(cfg: dict) -> tuple[str, str]:
    """(instance OCID, compartment OCID) from the instance metadata service."""
    req = urllib.request.Request(cfg["metadata_url"], headers={"Authorization": "Bearer Oracle"})
    with urllib.request.urlopen(req, timeout=5) as r:
        meta = json.load(r)
    return meta["id"], meta["compartmentId"]


def monitoring_client(cfg: dict):
    """A MonitoringClient for PostMetricData: signed by the instance principal on a node, or by an API
    key from a config file (`auth: api_key`, off OCI and in the tests, with `endpoint` their stand-in).
    No retries here: a post that fails is logged and the next minute's post is the retry."""
    import oci
    if cfg["auth"] == "instance_principal":
        signer = oci.auth.signers.InstancePrincipalsSecurityTokenSigner()
        config, kw = {"region": cfg.get("region") or signer.region}, {"signer": signer}
    else:
        config, kw = oci.config.from_file(cfg.get("config_file", "~/.oci/config"), cfg.get("profile", "DEFAULT")), {}
    client = oci.monitoring.MonitoringClient(config, retry_strategy=oci.retry.NoneRetryStrategy(),
                                             timeout=(5, 20), **kw)
    # PostMetricData has an endpoint of its own: telemetry-ingestion.<region>, not telemetry.<region>.
    client.base_client.endpoint = cfg["endpoint"] or client.base_client.endpoint.replace(
        "://telemetry.", "://telemetry-ingestion.", 1)
    return client


def load_config(path: str) -> dict:
    cfg = dict(DEFAULTS)
    if os.path.exists(path):
        with open(path) as f:
            cfg.update(json.load(f))
    cfg["pool"] = os.environ.get("AMPERE_LLM_METRICS_POOL") or cfg["pool"]
    return cfg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--config", default="/etc/ampere-llm/metrics.json")
    ap.add_argument("--once", action="store_true", help="sample twice, post once, exit (1 if the post failed)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
    cfg = load_config(a.config)
    if not cfg["pool"]:
        log.error("no pool name (AMPERE_LLM_METRICS_POOL, set by the pool's user data): nothing to post under")
        return 2
    while True:  # no identity, no client: wait for the metadata service / the signer, never give up
        try:
            instance, compartment = instance_identity(cfg)
            client = monitoring_client(cfg)
            break
        except Exception as e:  # noqa: BLE001 - the SDK's signer raises many kinds; each means "not yet"
            log.error("cannot get this instance's identity or signer (%s: %s); retrying", type(e).__name__, e)
            if a.once:
                return 1
            time.sleep(cfg["post_interval"])
    pub = Publisher(cfg, client, compartment, {"resourceId": instance, "pool": cfg["pool"]})
    log.info("posting %s metrics of %s (pool %s) every %s s", cfg["namespace"], instance, cfg["pool"],
             cfg["post_interval"])
    if a.once:
        pub.sample()
        time.sleep(min(1.0, cfg["sample_interval"]))
        pub.sample()
        return 0 if pub.post() else 1
    last_post = time.monotonic()
    while True:
        pub.sample()
        if time.monotonic() - last_post >= cfg["post_interval"]:
            last_post = time.monotonic()
            pub.post()
        time.sleep(cfg["sample_interval"])


if __name__ == "__main__":
    sys.exit(main())
