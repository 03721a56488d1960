"""Python 3.10 (Ubuntu 22.04's, the reference host's) is supported by design: no reachable OS ships
it, so the code that runs on a node is checked statically. vermin finds syntax, modules, functions
and arguments newer than 3.10 (tomllib, asyncio.timeout, TaskGroup, except*, StrEnum...): the
service, the monitoring role's metrics publisher (a node's), and the collection's plugins (modules run
with the node's Python, filters and module_utils with the controller's)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import tomllib
from conftest import BIN, COLLECTION, ROLES

SERVICE = ROLES / "backend" / "files" / "backend"
PUBLISHER = ROLES / "monitoring" / "files"


def vermin(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "vermin"), "-t=3.10-", "--no-tips", "--violations", "--no-parse-comments",
                           *map(str, paths)], capture_output=True, text=True, timeout=300)


def test_node_code_needs_nothing_newer_than_python_310():
    r = vermin(SERVICE / "src", PUBLISHER, COLLECTION / "plugins")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Minimum required versions" in r.stdout, r.stdout  # it did analyse the files


@pytest.mark.parametrize("code", ["import tomllib\n", "import asyncio\nasyncio.timeout(1)\n",
                                  "try:\n    pass\nexcept* ValueError:\n    pass\n"])
def test_the_check_fails_on_311_only_code(tmp_path, code):
    (tmp_path / "new.py").write_text(code)
    r = vermin(tmp_path)
    assert r.returncode != 0 and "3.11" in r.stdout, r.stdout


def test_package_declares_310_and_its_backport():
    project = tomllib.loads((SERVICE / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    assert any(d.replace(" ", "").startswith("tomli") and "python_version<'3.11'" in d.replace(" ", "")
               for d in project["dependencies"]), project["dependencies"]
