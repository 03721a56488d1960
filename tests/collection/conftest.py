"""Shared helpers for the collection's tests: run ansible-playbook from the repository root."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COLLECTION = REPO / "collections" / "ansible_collections" / "ampere" / "llm"
ROLES = COLLECTION / "roles"
BIN = Path(sys.executable).parent


def ansible_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / "collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_RETRY_FILES_ENABLED="0")
    env.update(extra)
    return env


@pytest.fixture
def playbook(tmp_path):
    """Run a playbook (YAML text) on this machine as `localhost`; returns (returncode, output)."""
    def run(text: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300):
        book = tmp_path / "play.yml"
        book.write_text(text)
        inventory = tmp_path / "hosts.yml"
        inventory.write_text(
            "all:\n  children:\n    llm_nodes:\n      hosts:\n        localhost:\n"
            f"          ansible_connection: local\n          ansible_python_interpreter: {sys.executable}\n")
        proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(book), *args],
                              cwd=REPO, env=env or ansible_env(), capture_output=True, text=True, timeout=timeout)
        return proc.returncode, proc.stdout + proc.stderr
    return run
