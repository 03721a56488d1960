"""The collection's fast checks: specs match defaults, early failures on bad input, build identity."""
from __future__ import annotations

import re

import pytest
import yaml
from conftest import REPO, ROLES

NODE_ROLES = ["base", "llama_cpp", "llama_cpp_python", "model", "backend"]


def _load(path):
    return yaml.safe_load(path.read_text()) or {}


@pytest.mark.parametrize("role", NODE_ROLES + (["web"] if (ROLES / "web").is_dir() else []))
def test_argument_specs_describe_every_default(role):
    """Every variable is in both defaults/main.yml and meta/argument_specs.yml, with the same default."""
    defaults = _load(ROLES / role / "defaults" / "main.yml")
    options = _load(ROLES / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options), f"{role}: defaults and argument_specs disagree"
    for name, spec in options.items():
        assert spec.get("description"), f"{role}: {name} has no description"
        if "default" in spec and "{{" not in str(defaults[name]):
            assert spec["default"] == defaults[name], f"{role}: {name} default differs between the two files"
        if "choices" in spec:
            assert defaults[name] in spec["choices"], f"{role}: default of {name} is not one of its choices"


def test_every_role_reads_as_its_life():
    """tasks/main.yml of each role: preflight first (always), then install/configure/run, each tagged."""
    for role in NODE_ROLES:
        tasks = _load(ROLES / role / "tasks" / "main.yml")
        names = [t["name"] for t in tasks]
        assert names[0] == "Preflight" and tasks[0]["tags"] == ["always"], role
        assert set(names[1:]) <= {"Install", "Configure", "Run"}, role
        for t in tasks[1:]:
            assert f"{role}_{t['name'].lower()}" in t["tags"] and t["name"].lower() in t["tags"], role


def _site_play() -> str:
    return (REPO / "playbooks" / "site.yml").read_text()


def test_bad_variable_fails_before_any_change(playbook):
    """A bad value for a later role stops the site playbook at its first task, naming the variable."""
    rc, out = playbook(_site_play(), "--check", "-e", "llama_cpp_blas=sometimes", "-e", "backend_port=http")
    assert rc != 0
    assert "llama_cpp_blas" in out and "backend_port" in out, out[-3000:]
    assert "Check every variable" in out
    recap = re.search(r"localhost\s+: ok=(\d+)\s+changed=(\d+)", out)
    assert recap and recap.group(2) == "0", out[-2000:]
    assert "ampere.llm.base : Install" not in out and "Install the build and runtime packages" not in out


def test_unsupported_system_fails_at_once(playbook):
    facts = ('{"ansible_facts": {"distribution": "CentOS", "distribution_major_version": "9",'
             ' "distribution_version": "9.4", "architecture": "x86_64"}}')
    rc, out = playbook(_site_play(), "--check", "-e", facts)
    assert rc != 0
    assert "supports Ubuntu 22.04, Ubuntu 24.04, Debian 12 and Debian 13" in out, out[-3000:]
    assert "CentOS 9 on x86_64" in out, out[-3000:]
    assert "Install the build and runtime packages" not in out


def test_unsupported_architecture_fails_at_once(playbook):
    facts = ('{"ansible_facts": {"distribution": "Ubuntu", "distribution_major_version": "22",'
             ' "distribution_version": "22.04", "architecture": "ppc64le"}}')
    rc, out = playbook(_site_play(), "--check", "-e", facts)
    assert rc != 0 and "Ubuntu 22.04 on ppc64le" in out, out[-3000:]


# CPU flags per target: test_cpu_flags.py.


def test_build_identity_follows_pin_and_flags(playbook, tmp_path):
    """The build directory is keyed by commit + flags: same inputs, same build; a new flag or pin, a new one."""
    prefix = tmp_path / "builds"
    prefix.mkdir()

    def build_id(*extra: str) -> str:
        rc, out = playbook("- hosts: llm_nodes\n  roles: [ampere.llm.llama_cpp]\n", "--check",
                           "-e", f"llama_cpp_prefix={prefix}", *extra)
        assert rc == 0, out[-3000:]
        return re.search(r"would build llama.cpp (\S+) with", out).group(1)

    plain = build_id()
    assert plain.startswith("0c1e57098bba43ac29e6e3b677cdceebdd22334f-") and build_id() == plain
    assert build_id("-e", "llama_cpp_blas=on") != plain
    assert build_id("-e", "llama_cpp_cpu_target=native") != plain
    assert build_id("-e", "llama_cpp_commit=" + "1" * 40).startswith("1" * 40 + "-")
    assert not any(prefix.iterdir())  # check mode built nothing
