"""Fixtures of the OCI tests: the collection on sys.path, a signing key + OCI config, the local OCI stand-in,
and a runner for ansible-playbook pointed at it."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ocitest, standin: unique names, not `conftest`
from ocitest import COMPARTMENT, ROOT, TENANCY, USER

sys.path.insert(0, str(ROOT / "collections"))


@pytest.fixture(scope="session")
def oci_key(tmp_path_factory):
    """A fresh API signing key and an ~/.oci/config-style file that uses it (0600, like `oci setup config`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    d = tmp_path_factory.mktemp("oci")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    fingerprint = ":".join(f"{b:02x}" for b in hashlib.md5(der).digest())
    (d / "key.pem").write_bytes(pem)
    (d / "key.pem").chmod(0o600)
    config = d / "config"
    config.write_text(f"[DEFAULT]\nuser={USER}\nfingerprint={fingerprint}\ntenancy={TENANCY}\n"
                      f"region=us-ashburn-1\nkey_file={d / 'key.pem'}\n")
    config.chmod(0o600)
    return dict(config_file=str(config), fingerprint=fingerprint, public_pem=pub, private_pem=pem)


@pytest.fixture
def standin(oci_key):
    import oci
    from standin import StandIn

    cfg = oci.config.from_file(oci_key["config_file"])
    s = StandIn(TENANCY, USER, oci_key["fingerprint"], oci_key["public_pem"], cfg).start()
    yield s
    s.stop()


@pytest.fixture
def ansible(standin, oci_key, tmp_path):
    """Run ansible-playbook (the repo's ansible.cfg, this venv) against the stand-in; returns a function
    (playbook, extra_vars, *flags) -> (returncode, [task results], the human-readable log)."""
    env = dict(os.environ,
               ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
               ANSIBLE_CALLBACK_PLUGINS=str(Path(__file__).parent / "callback_plugins"),
               ANSIBLE_CALLBACKS_ENABLED="results_file", RESULTS_FILE=str(tmp_path / "results.json"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
               ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_PIPELINING="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
               OCI_CONFIG_FILE=oci_key["config_file"], AMPERE_LLM_OCI_ENDPOINT=standin.url,
               AMPERE_LLM_OCI_POLL_INTERVAL="0.05")
    if (ROOT / "ansible.cfg").exists():
        env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env["PATH"]

    def run(playbook, extra_vars=None, *flags, env_extra=None):
        ev = tmp_path / "extra.json"
        ev.write_text(json.dumps({"compartment_id": COMPARTMENT, **(extra_vars or {})}))
        cmd = [os.path.join(bindir, "ansible-playbook"), str(playbook), "-e", f"@{ev}", *flags]
        p = subprocess.run(cmd, env={**env, **(env_extra or {})}, cwd=ROOT, capture_output=True, text=True, timeout=180)
        results = tmp_path / "results.json"
        out = json.loads(results.read_text()) if results.exists() else []
        results.unlink(missing_ok=True)
        return p.returncode, out, p.stdout + p.stderr

    return run
