"""The collection end to end: `molecule test` boots a Debian 12 systemd container, runs the site
playbook on it (llama.cpp compiled from the sdist, SmolLM2 as the model), converges again expecting
changed=0, and verifies the node through NGINX (molecule/default/verify.yml)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import BIN, REPO, ansible_env
from small_models import smollm2


@pytest.mark.timeout(2400)
def test_molecule_scenario(tmp_path):
    for tool in ("systemd-nspawn", "debootstrap", "ssh", "nsenter"):
        assert shutil.which(tool), f"{tool} is missing: `make deps` installs it"
    assert os.geteuid() == 0, "booting a systemd container needs root"
    smollm2()  # the model file reaches the container through a read-only bind mount of the cache
    env = ansible_env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("ANSIBLE_CONFIG")  # molecule writes its own
    log = tmp_path / "molecule.log"
    with open(log, "w") as out:
        proc = subprocess.run([str(BIN / "molecule"), "test"], cwd=REPO, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=2300)
    text = log.read_text()
    if proc.returncode != 0:
        sys.stdout.write(text[-20000:])  # pytest shows it with the failure
    assert proc.returncode == 0, "molecule test failed (its output is printed above)"
    # The verify steps reported what they proved (their success messages).
    assert "tokens in" in text and "systemd-analyze security exposure" in text
