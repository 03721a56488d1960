"""ansible-lint at its strictest (production) profile over the collection, playbooks and molecule."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ansible_lint_production_profile():
    lint = Path(sys.executable).with_name("ansible-lint")
    paths = ["site.yml", "playbooks", "collections/ansible_collections/ampere/llm", "molecule"]
    r = subprocess.run([str(lint), "--format", "pep8", "--nocolor", *paths], cwd=ROOT,
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections")})
    assert r.returncode == 0, r.stdout + r.stderr
