"""ansible-lint at its strictest (production) profile over the whole tree: every playbook, role,
inventory, molecule scenario and collection file ansible-lint recognises (.ansible-lint excludes only
what is not Ansible content: the venv, artifacts and ansible-test output)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ansible_lint_production_profile_whole_tree():
    lint = Path(sys.executable).with_name("ansible-lint")
    # No path arguments: ansible-lint walks the project from its root (.ansible-lint is read there).
    r = subprocess.run([str(lint), "--format", "pep8", "--nocolor"], cwd=ROOT,
                       capture_output=True, text=True, timeout=900,
                       env={**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections")})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Passed" in r.stdout + r.stderr, r.stdout + r.stderr  # it did lint (the summary line)
