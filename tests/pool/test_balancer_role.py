"""The balancer role (issue 20): every variable documented, bad values refused before any change,
the HAProxy configuration the local pool runs is the one Ansible renders from the role (one
template, no second copy), and `molecule test -s balancer` converges a booted container twice
(changed=0 the second time) and verifies HTTPS, the redirect, X-Forwarded-For and a drain."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import local
import pytest
import yaml

ROOT = local.ROOT
ROLE = local.BALANCER_ROLE
BIN = Path(sys.executable).parent
POOL_ID = "ocid1.instancepool.oc1.iad.example"


def ansible(tmp_path: Path, **extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"),
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PYTHON_INTERPRETER": sys.executable}
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", str(Path(__file__).with_name(
        "balancer_render.yml")), "-e", json.dumps({"dest": str(tmp_path), **extra})],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_every_variable_documented():
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    options = yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert set(options) == set(defaults)
    for name, option in options.items():
        assert option.get("description"), name
        if "default" in option:
            assert option["default"] == defaults[name], name


def test_ansible_renders_what_the_local_pool_runs(tmp_path):
    pool = local.LocalPool(local.Config(name="render-check", tls_cert="/nonexistent/tls.pem", port=18990))
    ours = pool.haproxy_config()
    values = dict(
        balancer_bind_addresses=["127.0.0.1"], balancer_http_port=18990, balancer_https_port=pool.c.https_port,
        balancer_tls_certificate=str(pool.tls_pem), balancer_backend_port=pool.c.seed_web,
        balancer_check_inter_ms=pool.c.check_inter_ms, balancer_check_fastinter_ms=pool.c.check_inter_ms // 2,
        balancer_servers=[{"name": f"s{i}", "address": "127.0.0.1", "namespace": pool.netns(f"s{i}"),
                           "disabled": True} for i in range(1, pool.c.slots + 1)],
        balancer_runtime_socket=str(pool.sock), balancer_log_target="stderr format short",
        balancer_drop_privileges=False, balancer_membership="oci",
        balancer_oci_compartment_id="ocid1.compartment.oc1..example", balancer_oci_instance_pool_id=POOL_ID)
    r = ansible(tmp_path, **values)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    rendered = (tmp_path / "haproxy.cfg").read_text()
    # Same file but for the first line (who rendered it).
    assert rendered.split("\n", 1)[1] == ours.split("\n", 1)[1]
    for line in ("balance leastconn", "http-check send meth GET uri /readyz", "option forwardfor",
                 "http-request del-header X-Forwarded-For", "ssl crt", "code 301 unless { ssl_fc }",
                 "on-marked-down shutdown-sessions"):
        assert line in rendered, line
    # The membership program adds servers with the options the configuration's default-server has.
    sync = json.loads((tmp_path / "sync.json").read_text())
    assert f"default-server {sync['server_options']}\n" in rendered
    assert sync["instance_pool_id"] == POOL_ID and sync["auth"] == "instance_principal"
    unit = (tmp_path / "haproxy-override.conf").read_text()
    assert "Restart=always" in unit and "ProtectSystem=strict" in unit


def test_bad_values_refused_naming_the_variable(tmp_path):
    r = ansible(tmp_path, balancer_membership="oci", balancer_https_port=80, balancer_check_path="readyz",
                balancer_tls_certificate_src="/nonexistent.pem")
    assert r.returncode != 0
    for message in ("balancer_membership: \"oci\" needs balancer_oci_compartment_id",
                    "balancer_https_port: must be a port number 1-65535 other than balancer_http_port",
                    "balancer_check_path: must be a path", "balancer_tls_certificate: must name where",
                    "balancer_tls_certificate_src: /nonexistent.pem is not a file"):
        assert message in r.stdout, r.stdout[-3000:]
    assert "balancer_backend_port:" not in r.stdout  # only what is wrong is named
    assert not (tmp_path / "haproxy.cfg").exists()


@pytest.mark.timeout(1200)
def test_molecule_balancer(tmp_path):
    assert os.geteuid() == 0, "booting a systemd container needs root"
    env = {k: v for k, v in os.environ.items() if k not in ("ANSIBLE_CONFIG", "ANSIBLE_COLLECTIONS_PATH")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    log = tmp_path / "molecule.log"
    with open(log, "w") as out:
        proc = subprocess.run([str(BIN / "molecule"), "test", "-s", "balancer"], cwd=ROOT, env=env,
                              stdout=out, stderr=subprocess.STDOUT, timeout=1150)
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text())  # molecule colours its output
    if proc.returncode != 0:
        sys.stdout.write(text[-20000:])
    assert proc.returncode == 0, "molecule test -s balancer failed (its output is printed above)"
    assert "balancer verified: HTTPS front door" in text
    assert "idempotence: Executed: Successful" in text
