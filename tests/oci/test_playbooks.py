"""pool.yml, rollout.yml and bake.yml end to end, through ansible-playbook and the oci SDK, against the
local OCI stand-in (tests/oci/standin.py) that checks every request's signature."""
import http.server
import json
import threading

import pytest
from ocitest import COMPARTMENT, ROOT, changed_tasks, task_results

PLAYBOOKS = ROOT / "playbooks"
FAST = {"rollout_drain_timeout": 1, "rollout_health_timeout": 20}


def pool_instances(standin):
    return [i for i in standin.of("Instance") if i._pool]


def test_pool_check_mode_then_create_then_nothing_to_change(standin, ansible):
    image = standin.add_image(COMPARTMENT, "ampere-llm-test")
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": image, "admin_cidr": "198.51.100.0/24"},
                           "--check", "--diff")
    assert rc == 0, log
    assert standin.mutations() == [], "check mode must not change anything"
    assert "Network (VCN, gateway, routes, subnets, security lists)" in changed_tasks(out)

    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": image, "admin_cidr": "198.51.100.0/24"})
    assert rc == 0, log
    (lb,) = standin.of("LoadBalancer")
    assert lb.lifecycle_state == "ACTIVE"
    assert lb.listeners["http"].connection_configuration.idle_timeout == 3600
    bs = lb.backend_sets["ampere-llm"]
    assert (bs.policy, bs.health_checker.url_path, bs.health_checker.protocol) == \
        ("LEAST_CONNECTIONS", "/readyz", "HTTP")
    nodes = pool_instances(standin)
    assert len(nodes) == 2 and {n.lifecycle_state for n in nodes} == {"RUNNING"}
    assert len({n.fault_domain for n in nodes}) == 2, "a pool of two spreads over two fault domains"
    assert sorted(b.name for b in bs.backends) == sorted(f"{n._ip}:80" for n in nodes)
    rules = {sl.display_name: sorted((r.source, r.tcp_options.destination_port_range.min)
                                     for r in sl.ingress_security_rules if r.protocol == "6")
             for sl in standin.of("SecurityList")}
    assert rules == {"ampere-llm-lb-sl": [("0.0.0.0/0", 80)],
                     "ampere-llm-nodes-sl": [("10.0.0.0/24", 80), ("198.51.100.0/24", 22)]}
    (lb_egress,) = {sl.display_name: sl for sl in standin.of("SecurityList")}["ampere-llm-lb-sl"].egress_security_rules
    assert (lb_egress.destination, lb_egress.tcp_options.destination_port_range.max) == ("10.0.1.0/24", 80)
    cost = task_results(out, "Monthly cost estimate (list prices; override price_* for yours)")["msg"]
    # 2 OCPU x $0.01 + 16 GB x $0.0015 per hour, 720 h: memory is more than half of a node's bill.
    assert (cost["per_node_usd"], cost["load_balancer_usd"], cost["at_min_size_usd"]) == ("31.68", "20.88", "84.24")
    assert "http://203.0.113.10/" in task_results(out, "The pool's URL")["msg"]
    (asc,) = standin.of("AutoScalingConfiguration")
    assert (asc.policies[0].capacity.min, asc.policies[0].capacity.max, asc.is_enabled) == (2, 4, True)

    before = len(standin.mutations())
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": image, "admin_cidr": "198.51.100.0/24"})
    assert rc == 0, log
    assert changed_tasks(out) == [] and len(standin.mutations()) == before, "a re-run must change nothing"

    # Drift made by hand in the console is put back: OCI's 60 s idle timeout, SSH open to the world.
    from oci.core.models import IngressSecurityRule, PortRange, TcpOptions
    lb.listeners["http"].connection_configuration.idle_timeout = 60
    nodes_sl = {sl.display_name: sl for sl in standin.of("SecurityList")}["ampere-llm-nodes-sl"]
    nodes_sl.ingress_security_rules.append(IngressSecurityRule(
        protocol="6", source="0.0.0.0/0", tcp_options=TcpOptions(destination_port_range=PortRange(min=22, max=22))))
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": image, "admin_cidr": "198.51.100.0/24"})
    assert rc == 0, log
    assert changed_tasks(out) == ["Network (VCN, gateway, routes, subnets, security lists)",
                                  "Public load balancer (listener :80, least connections, health check /readyz)"]
    assert lb.listeners["http"].connection_configuration.idle_timeout == 3600
    assert ("0.0.0.0/0", "6") not in {(r.source, r.protocol) for r in nodes_sl.ingress_security_rules}

    # pool_state=absent removes everything in an order OCI accepts (the stand-in answers 409 to a
    # subnet or VCN that is still in use), keeps the image, and a second removal has nothing to do.
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"pool_state": "absent"})
    assert rc == 0, log
    assert standin.of("InstancePool")[0].lifecycle_state == "TERMINATED"
    assert {i.lifecycle_state for i in standin.of("Instance")} <= {"TERMINATING", "TERMINATED"}
    assert standin.of("LoadBalancer")[0].lifecycle_state == "DELETED"
    assert standin.of("InstanceConfiguration") == [] and standin.of("AutoScalingConfiguration") == []
    assert {r.lifecycle_state for k in ("Vcn", "Subnet", "SecurityList", "RouteTable", "InternetGateway")
            for r in standin.of(k)} == {"TERMINATED"}
    assert [i.lifecycle_state for i in standin.of("Image")] == ["AVAILABLE"]
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"pool_state": "absent"})
    assert rc == 0 and changed_tasks(out) == [], log


def test_rollout_rolls_back_a_sick_image_then_replaces_every_node_without_dropping_below_two(standin, ansible):
    old = standin.add_image(COMPARTMENT, "ampere-llm-v1")
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": old})
    assert rc == 0, log
    (pool,) = standin.of("InstancePool")
    old_config, old_nodes = pool.instance_configuration_id, {n.id for n in pool_instances(standin)}

    # 1. New instances that never pass /readyz at the balancer: roll back, the old ones keep serving.
    sick = standin.add_image(COMPARTMENT, "ampere-llm-v2-broken")
    standin.bad_images.add(sick)
    rc, out, log = ansible(PLAYBOOKS / "rollout.yml", {"image_id": sick, **FAST, "rollout_health_timeout": 2})
    assert rc != 0
    msg = task_results(out, "Roll the nodes onto the new image")["msg"]
    assert "were not healthy at the balancer" in msg and "old ones keep serving" in msg, msg
    assert {n.id for n in pool_instances(standin)} == old_nodes
    assert pool.instance_configuration_id == old_config and pool.size == 2
    assert not [e for e in standin.events if e[1] == "drain"], "no old node is drained for a sick image"
    assert standin.of("AutoScalingConfiguration")[0].is_enabled, "autoscaling resumes after a failed roll"

    # Check mode shows the plan (its configuration exists now) and changes nothing.
    before = len(standin.mutations())
    rc, out, log = ansible(PLAYBOOKS / "rollout.yml", {"image_id": sick, **FAST}, "--check")
    assert rc == 0, log
    plan = task_results(out, "Roll the nodes onto the new image")
    assert plan["changed"] and sorted(plan["replaced"]) == sorted(old_nodes) and plan["batches"] == [plan["replaced"]]
    assert len(standin.mutations()) == before

    # 2. A good image: grow, healthy, drain the old, detach them; never below two serving backends.
    new = standin.add_image(COMPARTMENT, "ampere-llm-v3")
    t0 = standin.serving_log[-1][0]
    rc, out, log = ansible(PLAYBOOKS / "rollout.yml", {"image_id": new, **FAST})
    assert rc == 0, log
    nodes = pool_instances(standin)
    assert len(nodes) == 2 and {n.image_id for n in nodes} == {new} and pool.size == 2
    assert min(n for t, n in standin.serving_log if t >= t0) >= 2
    old_ips = {i._ip for i in standin.of("Instance") if i.id in old_nodes}
    drains = {ip: t for t, what, ip in standin.events if what == "drain"}
    detaches = {ip: t for t, what, ip in standin.events if what == "detach" and ip in old_ips}
    assert set(drains) == set(detaches) == old_ips
    assert all(drains[ip] < detaches[ip] for ip in old_ips), "every old node is drained before it is removed"
    assert {i.lifecycle_state for i in standin.of("Instance") if i.id in old_nodes} <= {"TERMINATING", "TERMINATED"}
    assert [e["action"] for e in task_results(out, "Roll the nodes onto the new image")["events"]] == \
        ["grow", "grow", "healthy", "drain", "drain", "remove", "remove"]

    before = len(standin.mutations())
    rc, out, log = ansible(PLAYBOOKS / "rollout.yml", {"image_id": new, **FAST})
    assert rc == 0, log
    assert changed_tasks(out) == [] and len(standin.mutations()) == before, "nothing left to roll"


def test_quota_error_says_what_to_do(standin, ansible):
    standin.instance_limit = 1
    image = standin.add_image(COMPARTMENT, "ampere-llm-test")
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": image})
    assert rc != 0
    msg = task_results(out, "Instance pool over the fault domains, attached to the backend set")["msg"]
    assert "400 LimitExceeded" in msg and "limit increase" in msg, msg


def test_rejected_signature_is_a_clear_auth_error_without_secrets(standin, ansible, oci_key, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "other.pem").write_bytes(other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    cfg = open(oci_key["config_file"]).read().replace(oci_key["config_file"].rsplit("/", 1)[0] + "/key.pem",
                                                       str(tmp_path / "other.pem"))
    (tmp_path / "config").write_text(cfg)
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": "ocid1.image.oc1..x"},
                           env_extra={"OCI_CONFIG_FILE": str(tmp_path / "config")})
    assert rc != 0
    msg = task_results(out, "Rights, availability domain, shape and limits (reads only)")["msg"]
    assert "401 NotAuthenticated" in msg and "fingerprint" in msg, msg
    assert standin.mutations() == []
    for secret in ("PRIVATE KEY", oci_key["private_pem"].decode().splitlines()[1][:40]):
        assert secret not in log


@pytest.fixture
def seed_root(tmp_path):
    """A seed's root filesystem as site.yml leaves it, plus what must not reach an image."""
    r = tmp_path / "seed"
    files = {
        "opt/ampere-llm/llama.cpp/current/build-info.json": json.dumps(
            {"commit": "0c1e57098bba43ac29e6e3b677cdceebdd22334f", "llama_cpp_python_version": "0.3.36",
             "blas": "none", "cmake_args": ["-DGGML_NATIVE=OFF", "-DGGML_CPU_ARM_ARCH=armv8.2-a"]}),
        "var/lib/ampere-llm/models/model.gguf.sha256": "ab" * 32 + "  model.gguf\n",
        "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
        "etc/ssh/ssh_host_ed25519_key": "secret host key\n",
        "var/lib/cloud/instances/i-1/user-data.txt": "x",
        "var/log/syslog": "seed log\n",
        "root/.bash_history": "oci setup config\n",
        "root/.oci/config": "[DEFAULT]\nkey_file=/root/.oci/key.pem\n",
        "root/.cache/huggingface/token": "hf_secret\n",
        "home/ubuntu/.ssh/authorized_keys": "ssh-ed25519 AAAA admin\n",
        "etc/ampere-llm/server.toml": "threads = 4\n",
    }
    for path, text in files.items():
        (r / path).parent.mkdir(parents=True, exist_ok=True)
        (r / path).write_text(text)
    return r


@pytest.fixture
def readyz():
    """The seed's NGINX as bake.yml sees it: /readyz answers 200."""
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/readyz" else 404)
            self.end_headers()

        def log_message(self, *a):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/readyz"
    srv.shutdown()


def test_bake_cleans_the_seed_and_captures_a_tagged_image_once(standin, ansible, seed_root, readyz, tmp_path):
    seed_id = standin.add_instance(COMPARTMENT)
    inv = tmp_path / "hosts.ini"
    inv.write_text("[seed]\nseed-1 ansible_connection=local "
                   f"ansible_python_interpreter={__import__('sys').executable}\n")
    args = {"seed_instance_id": seed_id, "image_root": str(seed_root), "seed_readyz_url": readyz,
            "ansible_become": False, "model_hf_repo": "example/model-GGUF", "model_hf_revision": "abc123"}
    rc, out, log = ansible(PLAYBOOKS / "bake.yml", args, "-i", str(inv))
    assert rc == 0, log
    (image,) = standin.of("Image")
    assert image.lifecycle_state == "AVAILABLE" and image.display_name.startswith("ampere-llm-0c1e5709-")
    assert image.freeform_tags["ampere-llm-llama-cpp-commit"] == "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
    assert image.freeform_tags["ampere-llm-model-sha256"] == "ab" * 32
    assert image.freeform_tags["ampere-llm-model-source"] == "example/model-GGUF@abc123"
    assert "-DGGML_NATIVE=OFF" in image.freeform_tags["ampere-llm-llama-cpp-flags"]
    assert (seed_root / "etc/machine-id").read_text() == ""
    for gone in ("etc/ssh/ssh_host_ed25519_key", "var/lib/cloud/instances", "root/.bash_history", "root/.oci",
                 "root/.cache/huggingface/token", "home/ubuntu/.ssh/authorized_keys"):
        assert not (seed_root / gone).exists(), gone
    assert (seed_root / "var/log/syslog").read_text() == ""
    assert (seed_root / "etc/ampere-llm/server.toml").exists(), "the node's own config stays"
    assert f"image_id={image.id}" in task_results(out, "The image for pool.yml and rollout.yml")["msg"]

    rc, out, log = ansible(PLAYBOOKS / "bake.yml", args, "-i", str(inv))
    assert rc == 0, log
    assert len(standin.of("Image")) == 1 and changed_tasks(out) == [], "the same build is not captured twice"

    # A seed whose NGINX trusts proxies of its own would keep pool nodes from trusting their balancer.
    site = seed_root / "etc/nginx/sites-enabled/ampere-llm"
    site.parent.mkdir(parents=True)
    site.write_text("server {\n    set_real_ip_from 192.0.2.0/24;\n}\n")
    rc, out, log = ansible(PLAYBOOKS / "bake.yml", args, "-i", str(inv))
    assert rc != 0
    assert "web_trusted_proxies=[]" in task_results(out, "The image leaves trusted proxies to the pool")["msg"]
