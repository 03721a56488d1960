"""What the pool tests do to and read from nodes: HAProxy's view of a node, the service's PID and
memory inside a node, a node's power cut. (No imports from conftest: every test folder has one.)"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import local  # pool/local.py (conftest puts it on sys.path)

ROOT = local.ROOT


def status(pool: local.LocalPool, node: str) -> str:
    """HAProxy's status of the node's slot: UP, DOWN, DRAIN, MAINT, "UP 1/2" (going down), ..."""
    return pool.stats()[pool.slot_of(node)]["status"]


def wait_status(pool: local.LocalPool, node: str, done, timeout: float) -> float:
    """Poll HAProxy until done(status) holds; return the time it did (time.monotonic)."""
    deadline = time.monotonic() + timeout
    while not done(st := status(pool, node)):
        assert time.monotonic() < deadline, f"{node} is still {st} after {timeout} s:\n{pool.status()}"
        time.sleep(0.05)
    return time.monotonic()


def service(pool: local.LocalPool, node: str) -> dict:
    """The service's main PID (inside the node), restart count and resident memory in MiB."""
    out = pool.exec_in(node, "sh", "-c",
                       "pid=$(systemctl show -p MainPID --value ampere-llm.service); "
                       "echo $pid $(systemctl show -p NRestarts --value ampere-llm.service) "
                       "$(awk '/VmRSS/{print $2}' /proc/$pid/status)").stdout.split()
    return {"pid": int(out[0]), "restarts": int(out[1]), "rss_mib": int(out[2]) / 1024}


def kill_backend(pool: local.LocalPool, node: str) -> int:
    """kill -9 of the node's service process (systemd restarts it: Restart=always); returns its PID.
    Not `systemctl kill`: it also signals the unit's auxiliary processes and fails on them here."""
    pid = service(pool, node)["pid"]
    pool.exec_in(node, "kill", "-9", str(pid))
    return pid


def power_off(pool: local.LocalPool, node: str) -> None:
    """The whole node dies at once: SIGKILL to its PID 1 ends every process in its PID namespace,
    nothing shuts down cleanly (a host losing power; its sockets are reset by the kernel here)."""
    nspawn = int((local.CACHE / "machines" / f"{node}.pid").read_text())
    init = int(subprocess.run(["pgrep", "-P", str(nspawn)], capture_output=True, text=True).stdout.split()[0])
    os.kill(init, signal.SIGKILL)


def haproxy_rss_mib(pool: local.LocalPool) -> float:
    with open(f"/proc/{pool.haproxy_pid()}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def show(capsys, text: str) -> None:
    """Counts go to the terminal of `make test` (not only into captured output) and to artifacts/."""
    with capsys.disabled():
        print("\n" + text, flush=True)
    out = ROOT / "artifacts"
    out.mkdir(exist_ok=True)
    with open(out / "pool-counts.txt", "a") as f:
        f.write(text + "\n")
