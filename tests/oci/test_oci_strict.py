"""pool.yml and rollout.yml against a stand-in that says no the way OCI does (tests/oci/standin.py):
launches that fail later in a work request, 409 while a resource is still changing, backends with no
health data, principals without a policy, lost answers to creates, pre-termination of leaving nodes,
HTTPS on the load balancer."""
import base64
import datetime
import shutil
import subprocess

import pytest
import yaml
from ocitest import COMPARTMENT, ROOT, changed_tasks, task_results

PLAYBOOKS = ROOT / "playbooks"
FAST = {"rollout_drain_timeout": 1, "rollout_health_timeout": 20}
PREFLIGHT = "Rights, availability domain, shape and limits (reads only)"
POOL_TASK = "Instance pool over the fault domains, attached to the backend set"
ROLL_TASK = "Roll the nodes onto the new image"


def pool_nodes(standin):
    return [i for i in standin.of("Instance") if i._pool]


@pytest.fixture
def pool(standin, ansible):
    """A running pool of two nodes on image v1 (autoscaling on)."""
    image = standin.add_image(COMPARTMENT, "ampere-llm-v1")
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": image})
    assert rc == 0, log
    (p,) = standin.of("InstancePool")
    return dict(image=image, pool=p, config=p.instance_configuration_id, nodes={n.id for n in pool_nodes(standin)})


def test_a_principal_without_compute_management_policy_fails_before_anything_is_created(standin, ansible):
    """The issue's first real run: instance-family granted, compute-management-family not. OCI refuses
    the instance configuration with 404 only after the VCN and the load balancer exist; the preflight
    reads find it first."""
    standin.denied = {"compute-management-family"}
    image = standin.add_image(COMPARTMENT, "ampere-llm-v1")
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": image})
    assert rc != 0
    msg = task_results(out, PREFLIGHT)["msg"]
    assert "404 NotAuthorizedOrNotFound" in msg and "list instance configurations" in msg, msg
    assert "manage compute-management-family in compartment" in msg, msg
    assert standin.mutations() == [], "nothing may be created"


def test_a_shape_missing_from_the_chosen_availability_domain_fails_before_anything_is_created(standin, ansible):
    image = standin.add_image(COMPARTMENT, "ampere-llm-v1")
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": image, "availability_domain": "Uocm:STANDIN-AD-2"})
    assert rc != 0
    msg = task_results(out, PREFLIGHT)["msg"]
    assert "VM.Standard.A2.Flex is not offered in Uocm:STANDIN-AD-2" in msg and "Uocm:STANDIN-AD-1" in msg, msg
    assert standin.mutations() == []

    standin.core_limit["standard-a2-core-count"] = 6  # one and a half nodes of 2 A2 OCPUs (4 cores each)
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": image})
    assert rc != 0
    msg = task_results(out, PREFLIGHT)["msg"]
    assert "standard-a2-core-count" in msg and "leaves 6 cores" in msg and "needs 8" in msg, msg
    assert "limit increase" in msg, msg
    assert standin.mutations() == []


def test_out_of_host_capacity_at_creation_fails_at_once_with_ocis_words(standin, ansible):
    """OCI accepts the pool, then its launch fails in the compute work request. The module must not
    poll instances for wait_timeout (1800 s: the test's 180 s limit would end it) but fail with the
    work request's error, and remove the pool that would otherwise keep nothing running."""
    standin.host_capacity = 1
    image = standin.add_image(COMPARTMENT, "ampere-llm-v1")
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": image})
    assert rc != 0
    msg = task_results(out, POOL_TASK)["msg"]
    assert "InternalError: Out of host capacity." in msg and "another availability_domain" in msg, msg
    (p,) = standin.of("InstancePool")
    assert p.lifecycle_state == "TERMINATED" and pool_nodes(standin) == []
    assert standin.of("AutoScalingConfiguration") == []

    standin.host_capacity = 100  # capacity is back: a re-run makes the pool
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": image})
    assert rc == 0, log
    assert len(pool_nodes(standin)) == 2


def test_a_create_whose_answer_is_lost_is_retried_with_its_token_and_makes_one_resource(standin, ansible):
    standin.lose_answer = {"create_instance_pool", "create_lb"}
    image = standin.add_image(COMPARTMENT, "ampere-llm-v1")
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": image})
    assert rc == 0, log
    assert standin.lose_answer == set(), "both answers were dropped once"
    assert len(standin.of("InstancePool")) == 1 and len(standin.of("LoadBalancer")) == 1
    assert standin.creates_without_token == [], "every create carries an opc-retry-token"


def test_rollouts_meet_capacity_failure_no_health_data_conflicts_and_a_shape_change(standin, ansible, pool):
    """One pool, four roll-outs (each step starts from what the previous one left)."""
    p, (asc,) = pool["pool"], standin.of("AutoScalingConfiguration")

    def unchanged():
        assert {n.id for n in pool_nodes(standin)} == pool["nodes"]
        assert (p.size, p.instance_configuration_id) == (2, pool["config"])
        assert [e for e in standin.events if e[1] == "drain"] == [], "nothing drained"

    # 1. Out of host capacity half-way through the grow: one new node launches, the second fails in
    #    the work request. Rolled back; autoscaling stays off, as the operator had left it.
    asc.is_enabled = False
    standin.host_capacity = 1
    v2 = standin.add_image(COMPARTMENT, "ampere-llm-v2")
    rc, out, log = ansible(PLAYBOOKS / "rollout.yml", {"image_id": v2, **FAST})
    assert rc != 0
    msg = task_results(out, ROLL_TASK)["msg"]
    assert "InternalError: Out of host capacity." in msg and "rolled back" in msg, msg
    unchanged()
    assert {i.lifecycle_state for i in standin.of("Instance") if i.image_id == v2} <= {"TERMINATING", "TERMINATED"}
    assert asc.is_enabled is False, "autoscaling stays as the operator left it"

    # 2. New backends that never get health data: BackendSetHealth names them nowhere (what the old
    #    code read as healthy); each backend's own status stays UNKNOWN. Rolled back; autoscaling on
    #    before, on after.
    asc.is_enabled, standin.host_capacity = True, 100
    standin.no_health_images.add(v2)
    rc, out, log = ansible(PLAYBOOKS / "rollout.yml", {"image_id": v2, **FAST, "rollout_health_timeout": 2})
    assert rc != 0
    msg = task_results(out, ROLL_TASK)["msg"]
    assert "not healthy at the balancer" in msg and "rolled back" in msg, msg
    unchanged()
    assert asc.is_enabled

    # 3. Another change starts on the balancer just before our drain, and the pool starts scaling just
    #    before our detach: OCI answers 409 Conflict / IncorrectState; the SDK's retry strategy waits
    #    and the roll-out completes.
    standin.no_health_images.clear()
    standin.interfere = {"update_backend": 1, "detach_instance": 1}
    rc, out, log = ansible(PLAYBOOKS / "rollout.yml", {"image_id": v2, **FAST})
    assert rc == 0, log
    assert {path.split("/")[2] for _, path in standin.conflicts} == {"loadBalancers", "instancePools"}, \
        standin.conflicts
    assert {n.image_id for n in pool_nodes(standin)} == {v2} and p.size == 2 and asc.is_enabled

    # 4. Same image, more OCPUs: a new instance configuration, and the nodes roll onto it.
    on_v2 = {n.id for n in pool_nodes(standin)}
    rc, out, log = ansible(PLAYBOOKS / "rollout.yml", {"image_id": v2, "node_ocpus": 4, **FAST})
    assert rc == 0, log
    roll = task_results(out, ROLL_TASK)
    assert roll["changed"] and sorted(roll["replaced"]) == sorted(on_v2)
    cfg = standin.res[p.instance_configuration_id]
    assert cfg.instance_details.launch_details.shape_config.ocpus == 4
    assert {n.instance_configuration_id for n in pool_nodes(standin)} == {cfg.id}


def test_a_running_pool_trusts_its_balancer_keeps_backends_and_drains_leaving_nodes(standin, ansible, pool, oci_key,
                                                                                    tmp_path):
    import time

    import oci

    # The nodes' NGINX takes client addresses from X-Forwarded-For of the balancer's subnet only:
    # cloud-init's first command writes the include (the image is baked before the pool's network
    # exists). Run that command as cloud-init would, into a scratch directory, and have NGINX check it.
    cfg = standin.res[pool["config"]]
    user_data = yaml.safe_load(base64.b64decode(cfg.instance_details.launch_details.metadata["user_data"]))
    include = tmp_path / "ampere-llm-trusted-proxies.conf"
    subprocess.run(["sh", "-c", user_data["runcmd"][0].replace("/etc/nginx/conf.d/ampere-llm-trusted-proxies.conf",
                                                              str(include))], check=True)
    assert include.read_text() == ("set_real_ip_from 10.0.0.0/24;\n"
                                   "real_ip_header X-Forwarded-For;\nreal_ip_recursive on;\n")
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin")
    if nginx:  # the web tests need it anyway; where it is missing, the text check above still holds
        conf = tmp_path / "nginx.conf"
        conf.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n    include {include};\n"
                        f"    server {{ listen 127.0.0.1:1; }}\n}}\n")
        test = subprocess.run([nginx, "-t", "-q", "-c", str(conf)], capture_output=True, text=True)
        assert test.returncode == 0, test.stderr

    # Drift repair of the health check while the pool registers a node right after the module read
    # the backend set: the update (which REPLACES the backend list) must not drop that node.
    (lb,) = standin.of("LoadBalancer")
    bs = lb.backend_sets["ampere-llm"]
    bs.health_checker.url_path = "/"
    standin.on_backend_set_read = lambda b: standin.register(b, "10.0.1.99", 80)
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": pool["image"]})
    assert rc == 0, log
    assert bs.health_checker.url_path == "/readyz"
    assert "10.0.1.99:80" in {b.name for b in bs.backends} and len(bs.backends) == 3

    # Scale-in (as autoscaling does): with the pre-termination action pool.yml set, the leaving node
    # is drained at the balancer first and terminated only after the timeout.
    p = pool["pool"]
    pre = p.lifecycle_management.lifecycle_actions.pre_termination
    assert (pre.is_enabled, pre.timeout) == (True, 360)
    mgmt = oci.core.ComputeManagementClient(oci.config.from_file(oci_key["config_file"]), service_endpoint=standin.url)
    mgmt.update_instance_pool(p.id, oci.core.models.UpdateInstancePoolDetails(size=1))
    (leaving,) = [ip for _, what, ip in standin.events if what == "pre-termination"]
    assert [b.drain for b in bs.backends if b.ip_address == leaving] == [True]
    assert not [e for e in standin.events if e[1] == "terminate" and e[2] == leaving], "not terminated yet"
    deadline = time.monotonic() + 10
    while not [e for e in standin.events if e[1] == "terminate" and e[2] == leaving] and time.monotonic() < deadline:
        mgmt.get_instance_pool(p.id)  # each request lets the stand-in's clock run
        time.sleep(0.1)
    assert [e for e in standin.events if e[1] == "terminate" and e[2] == leaving], "terminated after the timeout"


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llm.example.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return dict(https_certificate_file=str(tmp_path / "cert.pem"), https_private_key_file=str(tmp_path / "key.pem"))


def test_https_listener_with_an_uploaded_certificate_and_http_redirected(standin, ansible, certificate):
    image = standin.add_image(COMPARTMENT, "ampere-llm-v1")
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": image, **certificate})
    assert rc == 0, log
    (lb,) = standin.of("LoadBalancer")
    (cert_name,) = lb.certificates
    https = lb.listeners["https"]
    assert (https.port, https.protocol, https.ssl_configuration.certificate_name) == (443, "HTTP", cert_name)
    assert https.connection_configuration.idle_timeout == 3600
    assert lb.listeners["http"].rule_set_names == ["redirect_to_https"]
    (rule,) = lb.rule_sets["redirect_to_https"].items
    assert (rule.action, rule.response_code, rule.redirect_uri.protocol, rule.redirect_uri.port) == \
        ("REDIRECT", 301, "HTTPS", 443)
    lb_sl = {sl.display_name: sl for sl in standin.of("SecurityList")}["ampere-llm-lb-sl"]
    assert {r.tcp_options.destination_port_range.min
            for r in lb_sl.ingress_security_rules if r.protocol == "6"} == {80, 443}
    assert "https://203.0.113.10/" in task_results(out, "The pool's URL")["msg"]
    assert "PRIVATE KEY" not in log

    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": image, **certificate})
    assert rc == 0 and changed_tasks(out) == [], log

    # The same listener on a certificate from OCI's Certificates service instead, by OCID.
    ocid = "ocid1.certificate.oc1.standin.abc"
    rc, out, log = ansible(PLAYBOOKS / "pool.yml", {"image_id": image, "https_certificate_id": ocid})
    assert rc == 0, log
    assert lb.listeners["https"].ssl_configuration.certificate_ids == [ocid]
