"""The balancer's membership program against the OCI stand-in: HAProxy's servers follow an instance
pool while streams run through it, and none is cut.

Set-up (no containers): a network namespace where the stand-in's private IPs (10.0.1.x) are local
addresses (a `local` route), one small streaming server in it answering on every one of them (each
"instance" is that server at its own IP), HAProxy in it rendered from the balancer role's template
with no server written in, and ampere-llm-balancer-sync laid out as the role installs it (the
program next to lib/haproxy_provider.py), pointed at the stand-in with an API key (on OCI: the
balancer's instance principal). Streaming clients run inside the namespace too.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import local
import pytest

ROOT = local.ROOT
sys.path.insert(0, str(ROOT / "tests/oci"))
COLL = ROOT / "collections/ansible_collections/ampere/llm"
SCRIPTS = ROOT / "scripts"  # the clients in the namespace read streams with scripts/sse.py
PORT, FRONT = 18500, 18590  # inside the namespace only
TENANCY, USER = "ocid1.tenancy.oc1..standintenancy", "ocid1.user.oc1..standinuser"
COMPARTMENT = "ocid1.compartment.oc1..standincompartment"

NODE = """
import http.server, sys, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        me = self.connection.getsockname()[0]  # the "instance" this connection reached
        if self.path == "/readyz":
            body = b"ready"
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body); return
        n = int(self.path.rsplit("=", 1)[1])
        self.send_response(200); self.send_header("Content-Type", "text/event-stream")
        self.send_header("X-Served-By", me); self.end_headers()
        for i in range(n):
            self.wfile.write(b"data: %d\\n\\n" % i); self.wfile.flush(); time.sleep(0.1)
        self.wfile.write(b"event: done\\ndata: {}\\n\\n")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""

CLIENT = """
import http.client, json, sys, time
sys.path.insert(0, sys.argv[3])
from sse import iter_reads  # scripts/sse.py, the one SSE reader
start = time.monotonic()
r = {"start": start, "tokens": 0, "done": False, "served_by": None}
try:
    c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
    c.request("GET", "/stream?n=" + sys.argv[2])
    resp = c.getresponse()
    r["status"], r["served_by"] = resp.status, resp.getheader("X-Served-By")
    for events in iter_reads(resp):
        for e in events:
            r["done"] = r["done"] or e.name == "done"
            r["tokens"] += e.name == "message" and not r["done"]
except Exception as e:
    r["error"] = repr(e)
r["end"] = time.monotonic()
print(json.dumps(r))
"""


@pytest.fixture
def standin(tmp_path):
    import oci
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from standin import StandIn  # tests/oci/standin.py

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    (tmp_path / "key.pem").chmod(0o600)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    fingerprint = ":".join(f"{b:02x}" for b in hashlib.md5(der).digest())
    config = tmp_path / "oci-config"
    config.write_text(f"[DEFAULT]\nuser={USER}\nfingerprint={fingerprint}\ntenancy={TENANCY}\n"
                      f"region=us-ashburn-1\nkey_file={tmp_path / 'key.pem'}\n")
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    s = StandIn(TENANCY, USER, fingerprint, pub, oci.config.from_file(str(config))).start()
    s.config_file = str(config)
    yield s
    s.stop()


@pytest.fixture
def netns():
    name = f"ampere-balancer-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    procs: list[subprocess.Popen] = []
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        # Every 10.0.1.x is this namespace's own address: the stand-in's instances, all reachable.
        subprocess.run(["ip", "-n", name, "route", "add", "local", "10.0.1.0/24", "dev", "lo"], check=True)

        def start(*cmd, **kw) -> subprocess.Popen:
            p = subprocess.Popen(["ip", "netns", "exec", name, *map(str, cmd)], **kw)
            procs.append(p)
            return p
        yield start
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        subprocess.run(["ip", "netns", "del", name], check=False)


def wait_for(what, done, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not (ok := done()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)  # a poll interval, not a wait for an outcome
    return ok


class Front:
    """HAProxy from the role's template in the namespace, the stand-in's instances behind it, and
    the membership program following one instance pool."""

    def __init__(self, standin, netns, tmp_path):
        import oci
        from ansible_collections.ampere.llm.plugins.module_utils.haproxy_provider import Runtime
        self.standin, self.netns, self.tmp = standin, netns, tmp_path
        self.mgmt = oci.core.ComputeManagementClient(oci.config.from_file(standin.config_file),
                                                     service_endpoint=standin.url)
        # The program and its library, laid out as the balancer role installs them.
        self.app = tmp_path / "balancer"
        (self.app / "lib").mkdir(parents=True)
        shutil.copy(COLL / "roles/balancer/files/ampere-llm-balancer-sync", self.app)
        shutil.copy(COLL / "plugins/module_utils/haproxy_provider.py", self.app / "lib")
        # HAProxy from the role's template: no server in the file, checks every 300 ms.
        self.sock = tmp_path / "haproxy.sock"
        self.checks = dict(balancer_check_inter_ms=300, balancer_check_fastinter_ms=200)
        (tmp_path / "haproxy.cfg").write_text(local.render_balancer_config(
            balancer_bind_addresses=["127.0.0.1"], balancer_http_port=FRONT, balancer_backend_port=PORT,
            balancer_runtime_socket=str(self.sock), balancer_log_target="stderr format short",
            balancer_drop_privileges=False, **self.checks))
        (tmp_path / "node.py").write_text(NODE)
        (tmp_path / "client.py").write_text(CLIENT)
        netns(sys.executable, tmp_path / "node.py", PORT)
        netns("haproxy", "-db", "-f", tmp_path / "haproxy.cfg", stdout=open(tmp_path / "haproxy.log", "w"),
              stderr=subprocess.STDOUT)
        self.rt = Runtime(str(self.sock))
        wait_for("HAProxy's runtime API", lambda: self.sock.exists() and self.rt.stats() == {})
        self.clients: list[subprocess.Popen] = []
        self.sync = None

    def config(self, image_name: str) -> str:
        """An instance configuration launching a (stand-in) image of that name."""
        from oci.core import models as cm
        return self.mgmt.create_instance_configuration(cm.CreateInstanceConfigurationDetails(
            compartment_id=COMPARTMENT, display_name=image_name, instance_details=cm.ComputeInstanceDetails(
                launch_details=cm.InstanceConfigurationLaunchInstanceDetails(
                    compartment_id=COMPARTMENT, shape="VM.Standard.A2.Flex",
                    source_details=cm.InstanceConfigurationInstanceSourceViaImageDetails(
                        image_id=self.standin.add_image(COMPARTMENT, image_name)))))).data.id

    def start(self, size: int, config_id: str) -> str:
        """A pool of `size` instances, and the membership program following it."""
        from oci.core import models as cm
        self.pool_id = self.mgmt.create_instance_pool(cm.CreateInstancePoolDetails(
            compartment_id=COMPARTMENT, instance_configuration_id=config_id, size=size, display_name="nodes",
            placement_configurations=[cm.CreateInstancePoolPlacementConfigurationDetails(
                availability_domain="Uocm:STANDIN-AD-1", primary_subnet_id="ocid1.subnet.oc1..standin")])).data.id
        settings = self.tmp / "sync.json"
        settings.write_text(json.dumps({
            "socket": str(self.sock), "backend": "nodes", "port": PORT, "compartment_id": COMPARTMENT,
            "instance_pool_id": self.pool_id, "auth": "api_key", "config_file": self.standin.config_file,
            "endpoint": self.standin.url, "interval": 0.3, "drain_timeout": 60,
            "server_options": local.balancer_values(**self.checks)["balancer_server_options"]}))
        self.sync = subprocess.Popen([sys.executable, self.app / "ampere-llm-balancer-sync", "--config", settings],
                                     stdout=open(self.tmp / "sync.log", "w"), stderr=subprocess.STDOUT)
        wait_for(f"{size} instances serving", lambda: len(self.members()) == size
                 and self.up() == {self.ip(i) for i in self.members()})
        return self.pool_id

    def members(self) -> set[str]:
        import oci
        return {i.id for i in oci.pagination.list_call_get_all_results(
            self.mgmt.list_instance_pool_instances, COMPARTMENT, self.pool_id).data}

    def ip(self, instance_id) -> str:
        return self.standin.res[instance_id]._ip

    def up(self) -> set[str]:
        return {n.split(":")[0] for n, r in self.rt.stats().items() if r["status"] == "UP"}

    def open_on(self, address) -> int:
        return int(self.rt.stats().get(f"{address}:{PORT}", {}).get("scur") or 0)

    def stream(self, tokens: int) -> None:
        """A client in the namespace streaming `tokens` events (0.1 s apart) through HAProxy."""
        self.clients.append(self.netns(sys.executable, self.tmp / "client.py", FRONT, tokens, SCRIPTS,
                                       stdout=subprocess.PIPE, text=True))

    def results(self) -> list[dict]:
        return [json.loads(c.communicate(timeout=60)[0]) for c in self.clients]

    def stop(self) -> str:
        if self.sync:
            self.sync.terminate()
            self.sync.wait(10)
        return (self.tmp / "sync.log").read_text() if (self.tmp / "sync.log").exists() else ""


@pytest.fixture
def front(standin, netns, tmp_path):
    f = Front(standin, netns, tmp_path)
    yield f
    f.stop()


def none_cut(results: list[dict]) -> bool:
    return all(r.get("status") == 200 and r["done"] and not r.get("error") for r in results)


@pytest.mark.timeout(300)
def test_servers_follow_the_pool_while_streams_run(front, capsys):
    from oci.core import models as cm
    f = front
    f.start(2, f.config("img-1"))
    first = {f.ip(i) for i in f.members()}
    for _ in range(4):  # ~6 s each: running through everything below
        f.stream(60)
    wait_for("streams on both nodes", lambda: all(f.open_on(a) > 0 for a in first))

    # Grow: a third instance joins and takes new streams once its checks pass.
    f.mgmt.update_instance_pool(f.pool_id, cm.UpdateInstancePoolDetails(size=3))
    wait_for("the new instance serving", lambda: len(f.up()) == 3, timeout=60)
    (new,) = f.up() - first
    t_grown = time.monotonic()
    for _ in range(2):
        f.stream(20)

    # Shrink: an instance with open streams leaves the pool (detached, terminated). The program
    # drains its server at once and deletes it only when its streams have ended.
    leaving = next(i for i in f.members() if f.ip(i) in first and f.open_on(f.ip(i)) > 0)
    gone = f.ip(leaving)
    open_then = f.open_on(gone)
    f.mgmt.detach_instance_pool_instance(f.pool_id, cm.DetachInstancePoolInstanceDetails(
        instance_id=leaving, is_decrement_size=True, is_auto_terminate=True))
    wait_for("its server drained", lambda: f.rt.stats().get(f"{gone}:{PORT}", {}).get("status") in ("DRAIN", None))
    t_drain = time.monotonic()
    for _ in range(2):
        f.stream(10)
    wait_for("its server deleted", lambda: f"{gone}:{PORT}" not in f.rt.stats(), timeout=60)
    results = f.results()
    log = f.stop()
    with capsys.disabled():
        print(f"\nmembership: {first} + {new} - {gone} ({open_then} stream(s) open on it when it left)\n"
              + "\n".join(f"  {r['served_by']}: {r['tokens']} tokens, done={r['done']}" for r in results)
              + f"\nsync log:\n{log}")

    # None cut: every stream, also those on the node that left, ran to its end.
    assert none_cut(results), results
    assert [r["tokens"] for r in results] == [60] * 4 + [20] * 2 + [10] * 2
    assert any(r["served_by"] == gone for r in results[:4])
    # No request reached the leaving node after it was drained; the new node took new streams.
    assert not [r for r in results if r["served_by"] == gone and r["start"] > t_drain]
    assert any(r["served_by"] == new and r["start"] > t_grown for r in results)
    # HAProxy's servers are the pool's instances now, changed without a reload (one process all along).
    assert set(f.rt.stats()) == {f"{f.ip(i)}:{PORT}" for i in f.members()}
    assert f"add {new}:{PORT}" in log and f"drain {gone}:{PORT}" in log and f"delete {gone}:{PORT} (drained)" in log


@pytest.mark.timeout(300)
def test_rollout_drains_on_haproxy(front, capsys):
    """The shared roll-out (rollout.py) with HaproxyPoolProvider: the OCI provider grows and detaches
    the pool, HAProxy says who is healthy, drains old nodes and counts their open requests."""
    from ansible_collections.ampere.llm.plugins.module_utils.haproxy_provider import HaproxyPoolProvider
    from ansible_collections.ampere.llm.plugins.module_utils.oci_common import Oci
    from ansible_collections.ampere.llm.plugins.module_utils.oci_provider import OciPoolProvider
    from ansible_collections.ampere.llm.plugins.module_utils.rollout import Rollout, plan

    f = front
    old_config, new_config = f.config("img-1"), f.config("img-2")
    f.start(2, old_config)
    old = {f.ip(i) for i in f.members()}
    o = Oci(dict(auth_type="api_key", config_file=f.standin.config_file, config_profile="DEFAULT", region=None,
                 endpoint=f.standin.url, wait_timeout=60, poll_interval=0.1))
    provider = HaproxyPoolProvider(OciPoolProvider(o, COMPARTMENT, f.pool_id, None, None, PORT), f.rt)
    for _ in range(4):
        f.stream(40)
    wait_for("streams on both nodes", lambda: all(f.open_on(a) > 0 for a in old))
    events = Rollout(provider, health_timeout=60, drain_timeout=30, poll=0.2).run(
        plan(provider.nodes(), provider.healthy(), new_config, batch_size=1))
    for _ in range(2):
        f.stream(5)
    results = f.results()
    log = f.stop()
    with capsys.disabled():
        print("\nroll-out through HAProxy: " + ", ".join(f"{e['action']} {e['node'] or ''}" for e in events)
              + "\n" + "\n".join(f"  {r['served_by']}: {r['tokens']} tokens, done={r['done']}" for r in results))

    assert none_cut(results), results
    new = {f.ip(i) for i in f.members()}
    assert new.isdisjoint(old) and len(new) == 2
    assert {n.image for n in provider.nodes()} == {new_config}
    assert set(f.rt.stats()) == {f"{a}:{PORT}" for a in new}
    # Each old node was drained before it was removed, and had finished its streams by then.
    drained = [e["node"] for e in events if e["action"] == "drain"]
    removed = [e["node"] for e in events if e["action"] == "remove"]
    assert len(drained) == 2 and drained == removed
    assert {r["served_by"] for r in results[-2:]} <= new, log
