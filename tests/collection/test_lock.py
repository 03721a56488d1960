"""The node's Python dependencies are the ones the tests ran, pinned by hash, for every platform and
Python the collection supports (roles/backend/files/requirements.lock, made by `make lock`).

- every requirement is pinned with == and carries sha256 hashes (pip --require-hashes needs both);
- it covers the service's declared dependencies, tomli below Python 3.11 included;
- this venv (the one every service test runs in) holds exactly the lock's versions for its Python;
- for x86_64 and aarch64 and Pythons 3.10-3.13, every pinned package has a file on PyPI that such a
  host can install (a wheel with a matching tag, a pure-Python wheel, or the sdist) whose sha256 is
  in the lock: the same check pip makes on the node, for the hosts this machine cannot boot.
"""
from __future__ import annotations

import importlib.metadata
import json
import platform
import re
import sys
import urllib.request

import pytest
import tomllib
from conftest import REPO, ROLES
from packaging.requirements import Requirement
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

sys.path.insert(0, str(REPO / "molecule" / "default"))
from lock_matches import locked_pins

LOCK = ROLES / "backend" / "files" / "requirements.lock"
PYPROJECT = ROLES / "backend" / "files" / "backend" / "pyproject.toml"
# Ubuntu 22.04's glibc (2.35) is the oldest of the supported systems: a wheel it accepts runs on all.
GLIBC_MINOR = 35


def _entries() -> list[tuple[Requirement, set[str]]]:
    """(requirement, its sha256 hashes) per lock entry."""
    out = []
    for block in re.split(r"\n(?=[A-Za-z])", LOCK.read_text()):
        lines = [line.strip().rstrip("\\").strip() for line in block.splitlines() if not line.startswith("#")]
        if not lines or not lines[0]:
            continue
        hashes = {h.split("sha256:", 1)[1] for h in lines[1:] if h.startswith("--hash=sha256:")}
        out.append((Requirement(lines[0]), hashes))
    return out


def test_every_requirement_is_pinned_with_hashes():
    entries = _entries()
    assert len(entries) >= 15, "the lock looks empty"
    for req, hashes in entries:
        assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", req
        assert hashes, f"{req} has no sha256"


def test_lock_covers_the_services_dependencies():
    locked = {canonicalize_name(r.name): r for r, _ in _entries()}
    for dep in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]:
        req = Requirement(dep)
        assert canonicalize_name(req.name) in locked, f"{dep} is not in the lock: make lock"
    assert str(locked["tomli"].marker) == 'python_full_version < "3.11"'


def test_tests_ran_the_locked_versions():
    """This venv is what the service tests run in: it must hold the lock's versions (make venv installs
    under the lock's pins; `make lock` after changing requirements-dev.txt or the service's dependencies)."""
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    pins = locked_pins(LOCK.read_text(), platform.python_version(), platform.machine())
    differ = {name: (v, installed.get(name)) for name, v in pins.items() if installed.get(name) != v}
    assert not differ, f"locked vs installed here: {differ}"


def _pypi_files(name: str) -> list[dict]:
    req = urllib.request.Request(f"https://pypi.org/simple/{name}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)["files"]


@pytest.fixture(scope="module")
def pypi_index():
    return {canonicalize_name(r.name): _pypi_files(canonicalize_name(r.name)) for r, _ in _entries()}


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
@pytest.mark.parametrize("python", ["3.10", "3.11", "3.12", "3.13"])
def test_lock_installs_on_every_supported_host(pypi_index, machine, python):
    version = tuple(int(p) for p in python.split("."))
    platforms = [f"manylinux_2_{m}_{machine}" for m in range(GLIBC_MINOR, 16, -1)]
    platforms += [f"manylinux2014_{machine}", f"linux_{machine}"]
    tags = set(cpython_tags(version, platforms=platforms)) | set(compatible_tags(version, platforms=platforms))
    env = {"python_version": python, "python_full_version": python + ".0", "platform_machine": machine}
    for req, hashes in _entries():
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        pinned = next(iter(req.specifier)).version
        usable = []
        for f in pypi_index[canonicalize_name(req.name)]:
            fn = f["filename"]
            if f.get("hashes", {}).get("sha256") not in hashes:
                continue
            if fn.endswith(".whl"):
                _, ver, _, file_tags = parse_wheel_filename(fn)
                if str(ver) == pinned and file_tags & tags:
                    usable.append(fn)
            elif fn.endswith((".tar.gz", ".zip")) and f"-{pinned}." in fn:
                usable.append(fn)  # an sdist builds anywhere (llama-cpp-python ships only that)
        assert usable, f"{req} has no hashed file for CPython {python} on {machine}"
