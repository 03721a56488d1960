"""The local pool for tests/pool: one seed converged by site.yml, one image, two nodes behind HAProxy,
built once per session (pool/local.py) and torn down at the end whatever happened.

Its ports are its own (seed SSH 22050, seed service 18200, seed page 18280, balancer 18290 for
HTTP and 18291 for HTTPS), so a `make demo` pool (22040/18000/18080 and 80 or 8080) and molecule
(22041/18100/18180) run beside it. The balancer terminates TLS with a certificate made here
(self-signed, for 127.0.0.1 and localhost); every test client goes through HTTPS and verifies it.
"""
from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "pool"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import local

# AMPERE_LLM_TEST_POOL_OFFSET=N runs a second test pool beside this one (name tN, every port + N): a
# run's first step removes whatever an earlier run of the same pool left, so two runs of one pool on a
# shared machine tear each other down. (Not "test-N": the default pool's clean-up globs "test-*".)
_N = int(os.environ.get("AMPERE_LLM_TEST_POOL_OFFSET", "0"))
CONFIG = local.Config(name=f"t{_N}" if _N else "test", port=18290 + _N, seed_ssh=22050 + _N,
                      seed_backend=18200 + _N, seed_web=18280 + _N, slots=4, check_inter_ms=1000, fall=2, rise=2,
                      https_port=18291 + _N)


def self_signed(directory: Path) -> Path:
    """A certificate and key for 127.0.0.1 and localhost in one PEM (what HAProxy's `crt` takes;
    clients verify against the same file: its certificate is its own authority)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ampere-llm test pool")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem = directory / "tls.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pem.chmod(0o600)
    return pem
NODES = 2


def leftovers(pool: local.LocalPool) -> list[str]:
    """Anything of this pool still running or mounted after teardown."""
    found = []
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    found += [line.strip() for line in ps.splitlines() if pool.prefix in line or str(pool.dir) in line]
    if Path("/run/netns").exists():
        found += [f"netns {p.name}" for p in Path("/run/netns").glob(f"{pool.prefix}-*")]
    found += [line for line in Path("/proc/mounts").read_text().splitlines() if pool.prefix in line]
    return found


@pytest.fixture(scope="session")
def pool(tmp_path_factory):
    local.LocalPool.preflight()  # haproxy, nspawn, ...: "make deps" when missing
    stale = local.LocalPool(CONFIG)
    stale.down()  # whatever a killed earlier run left
    p = local.LocalPool(dataclasses.replace(CONFIG, tls_cert=str(self_signed(tmp_path_factory.mktemp("tls")))))
    t0 = time.monotonic()
    try:
        p.up(NODES)
        print(f"\npool up in {time.monotonic() - t0:.0f} s (seed converge, image, {NODES} nodes):\n{p.status()}")
        yield p
    finally:
        t1 = time.monotonic()
        p.down()
        left = leftovers(p)
        print(f"pool down in {time.monotonic() - t1:.0f} s; left behind: {left or 'nothing'}")
        assert not left, f"the pool's teardown left these behind: {left}"


@pytest.fixture
def pool2(pool):
    """The session pool with exactly NODES healthy nodes (a failover test leaves a dead one)."""
    provider = local.LocalProvider(pool)
    for node in provider.nodes():
        if node.id not in provider.healthy():
            pool.remove_node(node.id)
    while len(pool.state.slots) < NODES:
        pool.add_node(pool.state.image)
    pool.wait_healthy(NODES, timeout=120)
    return pool
