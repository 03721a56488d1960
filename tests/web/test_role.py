"""The web role's own promises, checked without a container: every variable documented, bad
values refused before any change with the variable named, and the site Ansible renders is the
one the page's tests run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from web_helpers import ROLE, ROOT, role_defaults

PLAYBOOK = Path(__file__).with_name("role_render.yml")


def ansible(tmp_path: Path, **extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"),
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PYTHON_INTERPRETER": sys.executable}
    exe = Path(sys.executable).with_name("ansible-playbook")
    return subprocess.run([str(exe), "-i", "localhost,", str(PLAYBOOK), "-e", json.dumps(extra)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_every_variable_documented():
    spec = yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert set(options) == set(role_defaults())
    for name, option in options.items():
        assert option.get("description"), name
        if "default" in option:  # documented defaults are the real ones
            assert option["default"] == role_defaults()[name], name


def test_bad_values_refused_naming_the_variable(tmp_path):
    out = tmp_path / "site.conf"
    r = ansible(tmp_path, dest=str(out), web_port=0, web_node_name="a;b",
                web_metrics_allow="10.0.0.0/8", web_backend="localhost")
    assert r.returncode != 0
    for message in ("web_port: must be a port number", "web_node_name: may hold letters",
                    "web_metrics_allow: must list CIDRs", "web_backend: must be host:port"):
        assert message in r.stdout, r.stdout[-3000:]
    assert "web_rate_limit_rps:" not in r.stdout  # only what is wrong is named
    assert not out.exists()


def test_ansible_renders_the_site_the_bench_runs(tmp_path, render_site):
    out = tmp_path / "site.conf"
    r = ansible(tmp_path, dest=str(out), web_listen_addresses=["127.0.0.1"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    rendered = out.read_text()
    # The bench renders with plain Jinja2; with the same values it must produce the same file.
    assert render_site(web_listen_addresses=["127.0.0.1"], web_node_name="",
                       ansible_managed=rendered.splitlines()[0].removeprefix("# ")) == rendered
    # No name given: NGINX names the machine it runs on, so every node of a baked image differs.
    assert "X-Served-By $ampere_llm_served_by always" in rendered and '""      $hostname;' in rendered
