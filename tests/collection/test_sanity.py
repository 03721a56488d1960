"""`ansible-test sanity` over the collection with zero findings. What it may not flag is listed in
the collection's tests/sanity/ignore-2.19.txt, one line per file and check, each with its reason
(the GPL header check in an Apache-2.0 collection). One folder is left out of the run, the inference
service (roles/backend/files/backend): it is the payload the backend role pip-installs on the node,
not Ansible code, so Ansible's plugin rules (pylint's disallowed `_`, pep8's lambda rule) do not
apply to it, and ansible-lint forbids skipping pep8/pylint in an ignore file. It has tests of its own
(tests/backend, tests/batching) and the Python 3.10 check (test_python310.py).

ansible-test runs each check in a venv of its own into which it bootstraps pip with a get-pip
script from a host this machine cannot reach (ci-files.testing.ansible.com). The stand-in written
here does what get-pip does with the pip wheel Python itself ships (ensurepip); ansible-test then
installs its pinned checkers from PyPI as usual. Its HOME (venvs, caches) lives in the project cache.
"""
from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
from pathlib import Path

import ansible_test
import pytest
from conftest import BIN, COLLECTION

GET_PIP = '''"""Stand-in for get-pip.py: pip install ARGS with the pip wheel bundled in Python's ensurepip."""
import glob, os, sys, ensurepip
wheel = glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled", "pip-*.whl"))[0]
sys.path.insert(0, wheel)
from pip._internal.cli.main import main
# get-pip's own switches (it would install setuptools and wheel unless told not to); pip has no such options.
sys.exit(main(["install", *[a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]]))
'''


def _home() -> Path:
    cache = Path(os.environ.get("AMPERE_LLM_CACHE", Path.home() / ".cache" / "ampere-llm"))
    home = cache / "ansible-test-home"
    requirements = Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
    pip_version = re.search(r"pip='([\d.]+)'", requirements.read_text()).group(1)
    stand_in = home / ".ansible" / "test" / "cache" / f"get_pip_{pip_version.replace('.', '_')}.py"
    stand_in.parent.mkdir(parents=True, exist_ok=True)
    stand_in.write_text(GET_PIP)
    return home


@pytest.mark.timeout(1800)
def test_ansible_test_sanity_has_no_findings():
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    env = dict(os.environ, HOME=str(_home()), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("ANSIBLE_COLLECTIONS_PATH", None)
    # One run at a time on this machine: runs share the cached venvs and the collection's tests/output.
    with open(Path(env["HOME"]) / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        r = subprocess.run([str(BIN / "ansible-test"), "sanity", "--venv", "--python", python, "--color", "no",
                            "--exclude", "roles/backend/files/backend/"],
                           cwd=COLLECTION, env=env, capture_output=True, text=True, timeout=1700)
    out = r.stdout + r.stderr
    findings = [line for line in out.splitlines() if line.startswith("ERROR:")]
    assert r.returncode == 0 and not findings, "\n".join(findings) + "\n" + out[-3000:]
    assert 'Running sanity test "validate-modules"' in out and 'Running sanity test "pylint"' in out, out[-3000:]
