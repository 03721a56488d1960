"""The collection as users get it: what `ansible-galaxy collection build` puts in the tarball.

Builds and installs it with molecule/collection.sh (the very step the molecule scenarios converge
from) and checks that every role's payload made it: every file the source tree holds under a role's
files/ and templates/, everything a task names as a `src`, the service's package and the page, the
licence, the site playbook and the sanity ignore file; and that nothing users do not need
(ansible-test's output, caches) rides along.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile

import yaml
from conftest import BIN, COLLECTION, REPO, ROLES, ansible_env


def _build(tmp_path):
    dest = tmp_path / "collections"
    env = ansible_env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(REPO / "molecule" / "collection.sh"), str(dest)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tarball,) = (tmp_path / "collections.artifact").glob("ampere-llm-*.tar.gz")
    return proc.stdout + proc.stderr, tarball, dest / "ansible_collections" / "ampere" / "llm"


def _tracked(under: str) -> list[str]:
    """Files git tracks below the collection (what a user of the source tree has)."""
    out = subprocess.run(["git", "ls-files", "-z", under], cwd=COLLECTION, capture_output=True, text=True, check=True)
    return [p for p in out.stdout.split("\0") if p]


def _task_sources(role: str) -> list[str]:
    """Payload paths a role's tasks name: template and copy `src`, resolved against its defaults."""
    defaults_file = ROLES / role / "defaults" / "main.yml"
    defaults = (yaml.safe_load(defaults_file.read_text()) or {}) if defaults_file.is_file() else {}
    found = []
    for tasks_file in (ROLES / role).glob("tasks/*.yml"):
        stack = list(yaml.safe_load(tasks_file.read_text()) or [])
        while stack:
            task = stack.pop()
            for key in ("block", "rescue", "always"):
                stack.extend(task.get(key, []))
            for module, subdir in (("ansible.builtin.template", "templates"), ("ansible.builtin.copy", "files")):
                src = (task.get(module) or {}).get("src") if isinstance(task.get(module), dict) else None
                if not src:
                    continue
                m = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", src)
                if m and m.group(1) in defaults:  # a role variable whose default is the payload
                    src = defaults[m.group(1)]
                if "{{" in src or src.startswith("/"):
                    continue  # a controller path made at run time (the packed service archive)
                found.append(f"roles/{role}/{subdir}/{src}")
    return found


def test_tarball_carries_every_roles_payload(tmp_path):
    log, tarball, installed = _build(tmp_path)
    assert "Skipping" not in log and "WARNING" not in log, log  # e.g. a link out of the collection
    with tarfile.open(tarball) as tar:
        members = {m.name: m for m in tar.getmembers()}
        manifest = json.load(tar.extractfile("MANIFEST.json"))
    names = set(members)
    assert manifest["collection_info"]["license"] == ["Apache-2.0"]
    assert "Apache License" in (installed / "LICENSE").read_text() and "LICENSE" in names
    assert "playbooks/site.yml" in names
    assert not [n for n, m in members.items() if m.issym() or m.islnk()], "links in the artifact"

    roles = sorted(p.name for p in ROLES.iterdir() if p.is_dir())
    for role in roles:
        payload = _tracked(f"roles/{role}/files") + _tracked(f"roles/{role}/templates")
        missing = [p for p in payload if p not in names]
        assert not missing, f"{role}: the build left out {missing}"
        for src in _task_sources(role):
            src = src.rstrip("/")
            assert src in names or any(n.startswith(src + "/") for n in names), f"{role}: tasks need {src}"
    # What the tasks reach by other means: the service the backend role packs and the page web_src names.
    for path in ("roles/backend/files/backend/pyproject.toml",
                 "roles/backend/files/backend/src/ampere_llm_server/cli.py",
                 "roles/backend/files/requirements.lock", "roles/web/files/web/index.html"):
        assert path in names and (installed / path).is_file(), path
    assert "tests/sanity/ignore-2.19.txt" in names  # Galaxy's sanity run reads it from the artifact
    assert not [n for n in names if n.startswith("tests/output") or "__pycache__" in n or n.endswith(".pyc")]


def test_installed_collection_runs_the_site_playbook_by_its_name(tmp_path):
    """`ansible-playbook ampere.llm.site` resolves from the installed collection alone."""
    _, _, installed = _build(tmp_path)
    env = ansible_env(ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"), ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false")
    env.pop("ANSIBLE_CONFIG")  # the repository's ansible.cfg points at the source tree
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  children:\n    llm_nodes:\n      hosts:\n        node: {}\n")
    proc = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", str(inventory), "ampere.llm.site"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(installed).startswith(str(tmp_path))
