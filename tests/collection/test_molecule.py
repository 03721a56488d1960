"""The collection end to end, from the artifact users get: each scenario's dependency step builds
the collection and installs the tarball into an empty collections path (molecule/collection.sh),
the only one Ansible is given; then `molecule test` boots a systemd container, runs the collection's
site playbook on it (llama.cpp compiled from the sdist, SmolLM2 as the model), converges again
expecting changed=0, and verifies the node through NGINX (molecule/default/verify.yml).

- default: Debian 12 (Python 3.11), with a check-mode run on the fresh host first;
- trixie:  Debian 13 (Python 3.13, newer systemd, NGINX and GCC), same playbooks, its own ports.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import BIN, REPO, ansible_env
from small_models import smollm2


@pytest.mark.timeout(2400)
@pytest.mark.parametrize("scenario", ["default", "trixie"])
def test_molecule_scenario(tmp_path, scenario):
    for tool in ("systemd-nspawn", "debootstrap", "ssh", "nsenter"):
        assert shutil.which(tool), f"{tool} is missing: `make deps` installs it"
    assert os.geteuid() == 0, "booting a systemd container needs root"
    smollm2()  # the model file reaches the container through a read-only bind mount of the cache
    env = ansible_env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("ANSIBLE_CONFIG")  # molecule writes its own
    env.pop("ANSIBLE_COLLECTIONS_PATH")  # molecule.yml names the installed tarball's path, and only it
    log = tmp_path / "molecule.log"
    with open(log, "w") as out:
        proc = subprocess.run([str(BIN / "molecule"), "test", "-s", scenario], cwd=REPO, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=2300)
    text = log.read_text()
    if proc.returncode != 0:
        sys.stdout.write(text[-20000:])  # pytest shows it with the failure
    assert proc.returncode == 0, f"molecule test -s {scenario} failed (its output is printed above)"
    # The verify steps reported what they proved (their success messages).
    for proof in ("ampere.llm from the artifact at", "tokens in", "moved pin reinstalled",
                  "venv matches the lock", "systemd-analyze security exposure"):
        assert proof in text, f"verify did not report: {proof}"
