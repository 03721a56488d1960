"""image/clean.sh, the one image-cleaning step (bake.yml on OCI, the local pool on its snapshot)."""
import subprocess

from ocitest import ROOT

CLEAN = ROOT / "image/clean.sh"


def run(*args, env=None):
    return subprocess.run(["bash", str(CLEAN), *args], capture_output=True, text=True, env=env, timeout=30)


def test_refuses_without_a_root_or_with_a_directory_that_is_not_one(tmp_path):
    p = run()
    assert p.returncode != 0 and "usage: clean.sh ROOT" in p.stderr
    p = run(str(tmp_path))
    assert p.returncode == 2 and "not a root filesystem" in p.stderr


def test_keeps_live_service_tmp_and_optionally_authorized_keys_and_is_idempotent(tmp_path):
    for path in ("etc/machine-id", "tmp/systemd-private-abc/x", "tmp/leftover", "root/.ssh/authorized_keys",
                 "usr/sbin/sshd", "etc/ssh/ssh_host_rsa_key"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x\n")
    p = run(str(tmp_path), env={"KEEP_AUTHORIZED_KEYS": "1", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "tmp/systemd-private-abc/x").exists() and not (tmp_path / "tmp/leftover").exists()
    assert (tmp_path / "root/.ssh/authorized_keys").exists()
    # No cloud-init in this root: a unit regenerates the host keys at first boot, enabled.
    assert (tmp_path / "etc/systemd/system/multi-user.target.wants/ampere-llm-ssh-hostkeys.service").is_symlink()
    again = run(str(tmp_path), env={"KEEP_AUTHORIZED_KEYS": "1", "PATH": "/usr/bin:/bin"})
    assert again.returncode == 0 and "removed" not in again.stdout and "emptied" not in again.stdout
