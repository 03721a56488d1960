#!/usr/bin/python
"""Put a GGUF model in place with its sha256 verified: the module `ampere.llm.model_fetch`.

The one place that fetches models (Hugging Face via huggingface_hub, a URL, or a file on the host).
A download goes to a temporary file beside the destination, is hashed, and only a match is renamed
into place (atomic on one filesystem), with the hash recorded in `<file>.sha256`. A mismatch fails
and leaves nothing behind. An installed file whose content no longer matches its record (tampered,
corrupted) fails too, instead of being silently replaced.
"""
from __future__ import annotations

DOCUMENTATION = r"""
module: model_fetch
short_description: Download a model file, verify its sha256, move it into place atomically
author:
  # The collection's maintainers have no GitHub handle to cite; "(!UNKNOWN)" is Ansible's form for that.
  - ampere-llm maintainers (!UNKNOWN)
version_added: "0.1.0"
description:
  - Fetches from Hugging Face (huggingface_hub, honouring an endpoint such as a mirror), an http(s) URL
    or a file already on the host, verifies the sha256, then renames it into place and records the hash.
  - A file already in place is hashed on every run; if it does not match what was recorded when it was
    installed, the module fails rather than replace it.
options:
  dest: {description: Final path of the model file., type: path, required: true}
  sha256: {description: Expected sha256 (64 hex)., type: str, required: true}
  source: {description: Where from., type: str, required: true, choices: [hf, url, file]}
  hf_repo: {description: Repository id for hf., type: str}
  hf_file: {description: File in the repository for hf., type: str}
  hf_revision: {description: Pinned revision (commit) for hf., type: str}
  hf_endpoint: {description: Hub endpoint (HF_ENDPOINT); empty for huggingface.co., type: str, default: ""}
  hf_token: {description: Token for gated or private repositories (never logged)., type: str, default: ""}
  url: {description: URL for the url source., type: str}
  src: {description: Path on the host for the file source., type: path}
  min_free_mb: {description: Free space to leave on the filesystem after the download., type: int, default: 1024}
  owner: {description: Owner of the file., type: str}
  group: {description: Group of the file., type: str}
  mode: {description: Mode of the file., type: raw, default: "0640"}
"""

EXAMPLES = r"""
- name: A GGUF file from Hugging Face at a pinned commit, checked against its sha256
  ampere.llm.model_fetch:
    source: hf
    hf_repo: TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF
    hf_file: tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf
    hf_revision: 52e7645ba7c309695bec7ac98f4f005b139cf465
    sha256: 9fecc3b3cd76bba89d504f29b616eedf7da85b96540e490ca5824d3f7d2776a0
    dest: /var/lib/ampere-llm/models/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf
    owner: root
    group: ampere-llm
  # huggingface_hub must be importable: run it with the Python of a venv that has it.
  vars:
    ansible_python_interpreter: /opt/ampere-llm/venv/bin/python

- name: The same file from a mirror of your own, leaving 2 GiB free after the download
  ampere.llm.model_fetch:
    source: url
    url: https://models.example.com/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf
    sha256: 9fecc3b3cd76bba89d504f29b616eedf7da85b96540e490ca5824d3f7d2776a0
    dest: /var/lib/ampere-llm/models/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf
    min_free_mb: 2048

- name: A file already on the host (shared storage, a disk baked into the image)
  ampere.llm.model_fetch:
    source: file
    src: /mnt/models/SmolLM2-135M-Instruct.Q4_1.gguf
    sha256: b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    dest: /var/lib/ampere-llm/models/SmolLM2-135M-Instruct.Q4_1.gguf
  register: model

- name: Say whether this run fetched it
  ansible.builtin.debug:
    msg: "{{ model.path }} ({{ model.size }} bytes, sha256 {{ model.sha256 }}), fetched now: {{ model.fetched }}"
"""

RETURN = r"""
path: {description: The model file., type: str, returned: always}
sha256: {description: Its verified sha256., type: str, returned: always}
size: {description: Its size in bytes., type: int, returned: when the file is in place}
fetched: {description: Whether this run fetched it., type: bool, returned: always}
"""

import hashlib
import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url

CHUNK = 1 << 20


class FetchError(Exception):
    """A failure with a message for the operator."""


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def read_record(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().split()[0].lower()
    except (OSError, IndexError):
        return None


def write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def hf_what(p: dict) -> str:
    return f"{p['hf_repo']}@{p['hf_revision']}/{p['hf_file']}"


def expected_size(p: dict) -> int | None:
    """Size of what will be fetched, for the free-space check (None if the source does not say)."""
    if p["source"] == "file":
        if not os.path.isfile(p["src"]):
            raise FetchError(f"model source file {p['src']} does not exist on this host")
        return os.path.getsize(p["src"])
    if p["source"] == "url":
        try:
            with open_url(p["url"], method="HEAD", timeout=30) as r:
                length = r.headers.get("Content-Length")
                return int(length) if length else None
        except Exception:  # noqa: BLE001  the GET below reports an unreachable URL with its own message
            return None
    hub = import_hub()
    try:
        meta = hub.get_hf_file_metadata(
            hub.hf_hub_url(p["hf_repo"], p["hf_file"], revision=p["hf_revision"], endpoint=p["hf_endpoint"] or None),
            token=p["hf_token"] or None)
    except Exception as e:
        raise FetchError(hf_error(p, e)) from e
    return meta.size


def import_hub():
    try:
        import huggingface_hub
    except ImportError as e:
        raise FetchError("huggingface_hub is not installed for the Python running this module "
                         "(the model role installs it into the service venv and runs the fetch there)") from e
    return huggingface_hub


def hf_error(p: dict, e: Exception) -> str:
    kind = type(e).__name__
    hints = {
        "RepositoryNotFoundError": "no such repository (or it is private: set model_hf_token)",
        "RevisionNotFoundError": "no such revision: model_hf_revision must be a commit of the repository",
        "EntryNotFoundError": "no such file at that revision: check model_hf_file",
        "RemoteEntryNotFoundError": "no such file at that revision: check model_hf_file",
        "GatedRepoError": "the repository is gated: accept its terms and set model_hf_token",
    }
    return f"cannot fetch {hf_what(p)} from the hub: {hints.get(kind, kind)} ({e})"


def fetch_into(p: dict, tmpdir: str) -> str:
    """Fetch the model into tmpdir and return the path of the fetched file."""
    part = os.path.join(tmpdir, "model.part")
    if p["source"] == "file":
        shutil.copyfile(p["src"], part)
        return part
    if p["source"] == "url":
        try:
            with open_url(p["url"], timeout=60) as r, open(part, "wb") as out:
                shutil.copyfileobj(r, out, CHUNK)
        except Exception as e:
            raise FetchError(f"cannot download {p['url']}: {e}") from e
        return part
    hub = import_hub()
    try:
        return hub.hf_hub_download(
            repo_id=p["hf_repo"], filename=p["hf_file"], revision=p["hf_revision"],
            local_dir=tmpdir, endpoint=p["hf_endpoint"] or None, token=p["hf_token"] or None)
    except Exception as e:
        raise FetchError(hf_error(p, e)) from e


def run(module: AnsibleModule) -> dict:
    p = module.params
    dest, want = p["dest"], p["sha256"].lower()
    record_path = f"{dest}.sha256"
    what = {"hf": hf_what(p) if p["source"] == "hf" else "", "url": p["url"], "file": p["src"]}[p["source"]]

    if os.path.exists(dest):
        have = sha256_of(dest)
        record = read_record(record_path)
        if have == want:
            changed = record != want
            if changed and not module.check_mode:
                write_atomically(record_path, f"{want}  {os.path.basename(dest)}\n")
            file_args = module.load_file_common_arguments(p, path=dest)
            changed = module.set_fs_attributes_if_different(file_args, changed)
            return {"changed": changed, "path": dest, "sha256": have, "size": os.path.getsize(dest), "fetched": False}
        if record != have:
            raise FetchError(
                f"checksum mismatch on the installed model {dest}: its sha256 is {have} but it was "
                f"installed as {record or 'unknown (no ' + record_path + ')'}, so the file was modified or "
                f"corrupted after installation. It is left as is for you to inspect; remove {dest} and "
                f"{record_path} and run again to fetch {want} anew.")
        # An intact earlier model under the same name: the pin moved on, fetch the new one.

    if module.check_mode:
        return {"changed": True, "path": dest, "sha256": want, "fetched": False}

    directory = os.path.dirname(dest) or "."
    size = expected_size(p)
    free = shutil.disk_usage(directory).free
    need = (size or 0) + p["min_free_mb"] * 1024 * 1024
    if free < need:
        raise FetchError(
            f"not enough free disk for the model on {directory}: {free // 2**20} MiB free, "
            f"{need // 2**20} MiB needed ({(size or 0) // 2**20} MiB model + {p['min_free_mb']} MiB headroom "
            f"(model_min_free_mb)). Nothing was downloaded.")

    # The temporary directory is on the destination's filesystem, so the rename below is atomic;
    # whatever happens, it is removed, so a failed fetch leaves nothing half-written.
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=directory) as tmpdir:
        fetched = fetch_into(p, tmpdir)
        got = sha256_of(fetched)
        if got != want:
            raise FetchError(
                f"sha256 mismatch for {what}: got {got}, expected {want} (model_sha256). "
                f"Nothing was installed; {dest} is unchanged.")
        file_args = module.load_file_common_arguments(p, path=fetched)
        module.set_fs_attributes_if_different(file_args, True)
        os.replace(fetched, dest)
        write_atomically(record_path, f"{want}  {os.path.basename(dest)}\n")
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return {"changed": True, "path": dest, "sha256": want, "size": os.path.getsize(dest), "fetched": True}


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            sha256=dict(type="str", required=True),
            source=dict(type="str", required=True, choices=["hf", "url", "file"]),
            hf_repo=dict(type="str"),
            hf_file=dict(type="str"),
            hf_revision=dict(type="str"),
            hf_endpoint=dict(type="str", default=""),
            hf_token=dict(type="str", default="", no_log=True),
            url=dict(type="str"),
            src=dict(type="path"),
            min_free_mb=dict(type="int", default=1024),
            owner=dict(type="str"),
            group=dict(type="str"),
            mode=dict(type="raw", default="0640"),
        ),
        required_if=[
            ("source", "hf", ["hf_repo", "hf_file", "hf_revision"]),
            ("source", "url", ["url"]),
            ("source", "file", ["src"]),
        ],
        supports_check_mode=True,
    )
    sha = module.params["sha256"].lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        module.fail_json(msg=f"sha256 must be 64 hex characters, got {module.params['sha256']!r}")
    try:
        module.exit_json(**run(module))
    except FetchError as e:
        module.fail_json(msg=str(e))


if __name__ == "__main__":
    main()
