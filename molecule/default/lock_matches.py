"""Does a node's venv hold exactly what the collection's lock pins for that node's Python and machine?

    lock_matches.py LOCK < <venv>/build-info.json      prints {"pins": N, "mismatch": {name: [locked, installed]}}

The lock (roles/backend/files/requirements.lock) is universal: one line per package and version
with environment markers (e.g. numpy for Python < 3.11 and >= 3.11); the markers are evaluated for
the node's Python and machine as its record states them. Exit 1 on any mismatch or an empty lock.
"""
from __future__ import annotations

import json
import sys

from packaging.requirements import Requirement


def locked_pins(lock_text: str, python: str, machine: str) -> dict[str, str]:
    env = {"python_version": ".".join(python.split(".")[:2]), "python_full_version": python,
           "platform_machine": machine, "sys_platform": "linux", "platform_system": "Linux",
           "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    pins = {}
    for line in lock_text.splitlines():
        if not line[:1].isalpha():  # hashes, comments, continuation lines
            continue
        req = Requirement(line.rstrip(" \\"))
        if req.marker is None or req.marker.evaluate(env):
            (spec,) = req.specifier
            pins[req.name.lower()] = spec.version
    return pins


def main() -> int:
    record = json.load(sys.stdin)
    with open(sys.argv[1], encoding="utf-8") as f:
        pins = locked_pins(f.read(), record["python"], record["machine"])
    installed = record["packages"]
    mismatch = {name: [version, installed.get(name)]
                for name, version in pins.items() if installed.get(name) != version}
    print(json.dumps({"pins": len(pins), "mismatch": mismatch, "python": record["python"]}))
    return 1 if mismatch or not pins else 0


if __name__ == "__main__":
    sys.exit(main())
