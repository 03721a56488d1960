# HAProxy as the pool's balancer: its runtime API, membership that follows the pool, and the roll-out Provider.
#
# One client of HAProxy's runtime API (the admin unix socket) for everything that changes a running
# balancer without a reload (a reload would start new processes; the API changes the one that
# carries the streams):
# - pool/local.py drives its HAProxy with it (slots, drain, health);
# - the balancer role installs this file next to ampere-llm-balancer-sync, which lists the OCI
#   instance pool's instances and makes HAProxy's servers follow them (add, drain, delete);
# - HaproxyPoolProvider lets the shared roll-out (rollout.py) drain and count requests on HAProxy
#   while the OCI instance pool grows and shrinks.
# Standard library only: the balancer host runs it without Ansible.
from __future__ import annotations

import csv
import io
import socket
from dataclasses import dataclass
from typing import Callable, Optional


class HAProxyError(Exception):
    """HAProxy refused a command, or its socket is not there; the message says which."""


# What a successful command answers (the runtime API answers errors as text, not as a status).
_ANSWERS = {"add server": "New server registered.", "del server": "Server deleted."}


class Runtime:
    """HAProxy's runtime API on a unix socket, for the servers of one backend."""

    def __init__(self, socket_path: str, backend: str = "nodes", timeout: float = 5.0):
        self.path, self.backend, self.timeout = str(socket_path), backend, timeout

    def command(self, cmd: str) -> str:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(self.timeout)
                s.connect(self.path)
                s.sendall(cmd.encode() + b"\n")
                out = b""
                while chunk := s.recv(65536):
                    out += chunk
        except OSError as e:
            raise HAProxyError(f"HAProxy's runtime API at {self.path} did not answer `{cmd}`: {e} "
                               f"(is HAProxy running with `stats socket {self.path} level admin`?)") from None
        text = out.decode(errors="replace").strip()
        verb = " ".join(cmd.split()[:2])
        expected = _ANSWERS.get(verb)
        if (expected is not None and expected not in text) or \
                (expected is None and cmd.split()[0] in ("set", "enable", "disable", "shutdown") and text):
            raise HAProxyError(f"HAProxy refused `{cmd}`: {text}")
        return text

    def stats(self) -> dict[str, dict]:
        """Server name -> its `show stat` row: status (UP, DOWN, DRAIN, MAINT, "UP 1/2", ...), scur
        (requests open now), stot (served), lastchg (seconds since its status changed), ..."""
        text = self.command("show stat").lstrip("# ")
        return {r["svname"]: r for r in csv.DictReader(io.StringIO(text))
                if r["pxname"] == self.backend and r["svname"] not in ("FRONTEND", "BACKEND")}

    def srv(self, name: str) -> str:
        return f"{self.backend}/{name}"

    def enter_checked(self, name: str) -> None:
        """Out of maintenance into service, but DOWN until `rise` checks of its own pass. Leaving
        maintenance alone would make it UP at once (HAProxy keeps the last health it knew), so it
        holds weight 0 (no traffic) for the instant between leaving maintenance and being set down."""
        s = self.srv(name)
        for cmd in (f"set weight {s} 0", f"enable health {s}", f"set server {s} state ready",
                    f"set server {s} health down", f"set weight {s} 100%"):
            self.command(cmd)

    def add(self, name: str, address: str, port: int, options: str) -> None:
        """A new server (dynamic: no reload), entering as in enter_checked."""
        self.command(f"add server {self.srv(name)} {address}:{port} {options}".strip())
        self.enter_checked(name)

    def drain(self, name: str) -> None:
        """No new requests; the open ones finish."""
        self.command(f"set server {self.srv(name)} state drain")

    def ready(self, name: str) -> None:
        """Back in service after a drain (its checks kept running)."""
        self.command(f"set server {self.srv(name)} state ready")

    def maint(self, name: str) -> None:
        self.command(f"set server {self.srv(name)} state maint")

    def delete(self, name: str, cut: bool = False) -> None:
        """Out of the balancer for good: maintenance (idle connections closed), then deleted.
        `cut` also ends requests still open (a node past its drain timeout, or one that is gone)."""
        self.maint(name)
        if cut:
            self.command(f"shutdown sessions server {self.srv(name)}")
        self.command(f"del server {self.srv(name)}")


@dataclass
class Member:
    name: str       # the server's name in HAProxy: "<address>:<port>", as OCI names a backend
    address: str
    port: int


def server_name(address: str, port: int) -> str:
    return f"{address}:{port}"


def sync(rt: Runtime, desired: list[Member], options: str, drain_timeout: float,
         log: Callable[[str], None] = lambda m: None) -> list[str]:
    """Make the backend's servers the `desired` members, one step per call (call it periodically).

    New members are added and serve once their checks pass. A server whose node left the pool is
    drained, and deleted once it has no open request (or after `drain_timeout` s in DRAIN; at once
    when its checks already fail: nothing can be running there). Servers already present are never
    re-enabled: a node the roll-out drained stays drained. Returns what it did."""
    done = []
    want = {m.name: m for m in desired}
    have = rt.stats()
    for name, m in want.items():
        if name not in have:
            rt.add(name, m.address, m.port, options)
            done.append(f"add {name}")
    for name, row in have.items():
        if name in want:
            continue
        status, open_now = row["status"], int(row["scur"] or 0)
        try:
            if status.startswith(("DOWN", "MAINT", "NOLB")):
                rt.delete(name, cut=True)
                done.append(f"delete {name} ({status})")
            elif status != "DRAIN":
                rt.drain(name)
                done.append(f"drain {name}")
            elif open_now == 0:
                rt.delete(name)
                done.append(f"delete {name} (drained)")
            elif int(row["lastchg"] or 0) >= drain_timeout:
                rt.delete(name, cut=True)
                done.append(f"delete {name} (drain timeout, {open_now} request(s) cut)")
        except HAProxyError as e:  # e.g. connections still attached: the next round tries again
            log(f"{name}: {e}")
    for d in done:
        log(d)
    return done


def oci_members(compute, network, management, compartment_id: str, pool_id: str, port: int) -> list[Member]:
    """The RUNNING instances of an OCI instance pool, by the private IP of their primary VNIC.
    Instances that are provisioning, stopping or terminating are not members (a terminating one is
    drained). Takes SDK clients (oci.core.ComputeClient, VirtualNetworkClient, ComputeManagementClient)."""
    import oci  # the balancer's venv has it; nothing else in this file needs it
    members = []
    instances = oci.pagination.list_call_get_all_results(
        management.list_instance_pool_instances, compartment_id, pool_id).data
    for inst in instances:
        if inst.state.upper() != "RUNNING":
            continue
        atts = oci.pagination.list_call_get_all_results(
            compute.list_vnic_attachments, compartment_id, instance_id=inst.id).data
        atts = [a for a in atts if a.lifecycle_state == "ATTACHED"]
        if not atts:
            continue  # no VNIC yet: the next round sees it
        vnics = [network.get_vnic(a.vnic_id).data for a in atts]
        primary = next((v for v in vnics if v.is_primary), vnics[0])
        members.append(Member(server_name(primary.private_ip, port), primary.private_ip, port))
    return members


class HaproxyPoolProvider:
    """rollout.Provider for an OCI instance pool behind HAProxy (the balancer role) instead of OCI's
    load balancer: the pool's nodes, growth, image and detach are the OCI provider's (`pool`, an
    OciPoolProvider from oci_provider.py); health, drain and open requests are HAProxy's, read and
    set on its runtime API (so this runs on the balancer host, where the socket is).
    HAProxy's servers are named as OCI names a backend (<private IP>:<port>), so
    pool.backend_name(node) is the server's name."""

    def __init__(self, pool, runtime: Runtime):
        self.pool, self.rt = pool, runtime

    def nodes(self):
        return self.pool.nodes()

    def healthy(self) -> set[str]:
        stats = self.rt.stats()
        # DRAIN passes its checks but takes no new requests: still healthy (as the local pool counts it).
        return {n.id for n in self.pool.nodes()
                if stats.get(self.pool.backend_name(n) or "", {}).get("status") in ("UP", "DRAIN")}

    def grow(self, image, count):
        return self.pool.grow(image, count)

    def use_image(self, image):
        self.pool.use_image(image)

    def drain(self, node) -> None:
        self.rt.drain(self.pool.backend_name(node))

    def undrain(self, node) -> None:
        self.rt.ready(self.pool.backend_name(node))

    def in_flight(self, node) -> Optional[int]:
        row = self.rt.stats().get(self.pool.backend_name(node) or "")
        return int(row["scur"] or 0) if row else 0

    def remove(self, node) -> None:
        name = self.pool.backend_name(node)
        try:
            self.rt.delete(name, cut=True)  # drained and empty by now (or past the drain timeout)
        except HAProxyError:
            if name in self.rt.stats():  # not merely deleted already by the membership program
                raise
        self.pool.remove(node)
