"""The model role against a local stand-in of the Hugging Face hub: the real huggingface_hub client
downloads, the sha256 is verified, mismatches and tampering fail with a clear message and leave nothing
half-written, a second run changes nothing, the free-disk check comes before any download."""
from __future__ import annotations

import hashlib
import json
import re
import sys

import pytest
from hf_standin import HubStandIn, Repo
from small_models import SMOLLM2_SHA256, smollm2, tiny

COMMIT = "5f1e0d2c3b4a59687766554433221100ffeeddcc"
REPO_ID = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def hub():
    # `corrupt.gguf` plays a file whose bytes differ from the published checksum.
    with HubStandIn({REPO_ID: Repo(COMMIT, {FILE: smollm2(), "corrupt.gguf": tiny()})}) as h:
        yield h


def _play(hub, models, **overrides) -> str:
    values = {"model_source": "hf", "model_hf_repo": REPO_ID, "model_hf_file": FILE, "model_hf_revision": COMMIT,
              "model_sha256": SMOLLM2_SHA256, "model_hf_endpoint": hub.url, "model_file": FILE,
              "model_dir": str(models), "model_group": "root", "model_venv": sys.prefix, "model_min_free_mb": 16}
    values.update(overrides)
    return ("- hosts: llm_nodes\n  gather_facts: true\n  roles:\n    - role: ampere.llm.model\n      vars: "
            + json.dumps(values) + "\n")


def _recap(out: str) -> tuple[int, int]:
    m = re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", out)
    assert m, out[-2000:]
    return int(m.group(1)), int(m.group(2))


def _leftovers(models):
    return sorted(p.name for p in models.iterdir())


def test_download_verify_install_then_nothing_to_do(hub, playbook, tmp_path):
    models = tmp_path / "models"
    rc, out = playbook(_play(hub, models))
    assert rc == 0, out[-3000:]
    model = models / FILE
    assert hashlib.sha256(model.read_bytes()).hexdigest() == SMOLLM2_SHA256
    assert (models / f"{FILE}.sha256").read_text().split()[0] == SMOLLM2_SHA256
    assert _leftovers(models) == [FILE, f"{FILE}.sha256"]  # no temp dir, no client cache left behind
    assert oct(model.stat().st_mode & 0o777) == "0o640"
    downloads = hub.downloads()

    rc, out = playbook(_play(hub, models))
    assert rc == 0 and _recap(out) == (0, 0), out[-3000:]
    rc, out = playbook(_play(hub, models), "--check")
    assert rc == 0 and _recap(out) == (0, 0), out[-3000:]
    assert hub.downloads() == downloads  # verified in place, not fetched again


def test_checksum_mismatch_fails_and_installs_nothing(hub, playbook, tmp_path):
    models = tmp_path / "models"
    rc, out = playbook(_play(hub, models, model_hf_file="corrupt.gguf"))
    assert rc != 0
    assert "sha256 mismatch" in out and f"{REPO_ID}@{COMMIT}/corrupt.gguf" in out and SMOLLM2_SHA256 in out, out[-3000:]
    assert _leftovers(models) == []


def test_unknown_revision_and_file_fail_clearly(hub, playbook, tmp_path):
    models = tmp_path / "models"
    rc, out = playbook(_play(hub, models, model_hf_revision="0" * 40))
    assert rc != 0 and "no such revision" in out, out[-3000:]
    rc, out = playbook(_play(hub, models, model_hf_file="missing.gguf"))
    assert rc != 0 and "no such file at that revision" in out, out[-3000:]
    assert _leftovers(models) == []


def test_tampered_model_fails_the_rerun(hub, playbook, tmp_path):
    models = tmp_path / "models"
    assert playbook(_play(hub, models))[0] == 0
    with open(models / FILE, "r+b") as f:  # one flipped byte in the middle
        f.seek(1 << 20)
        byte = f.read(1)
        f.seek(1 << 20)
        f.write(bytes([byte[0] ^ 0xFF]))
    rc, out = playbook(_play(hub, models))
    assert rc != 0
    assert "checksum mismatch on the installed model" in out and "modified or corrupted" in out, out[-3000:]
    assert (models / FILE).exists()  # left for inspection, not silently replaced


def test_free_disk_checked_before_downloading(hub, playbook, tmp_path):
    models = tmp_path / "models"
    before = hub.downloads()
    rc, out = playbook(_play(hub, models, model_min_free_mb=1 << 30))
    assert rc != 0 and "not enough free disk" in out and "model_min_free_mb" in out, out[-3000:]
    assert hub.downloads() == before and _leftovers(models) == []


def test_url_source(hub, playbook, tmp_path):
    models = tmp_path / "models"
    url = f"{hub.url}/{REPO_ID}/resolve/{COMMIT}/{FILE}"
    rc, out = playbook(_play(hub, models, model_source="url", model_url=url))
    assert rc == 0, out[-3000:]
    assert hashlib.sha256((models / FILE).read_bytes()).hexdigest() == SMOLLM2_SHA256


def test_hf_source_without_a_pinned_sha256_fails_early(hub, playbook, tmp_path):
    rc, out = playbook(_play(hub, tmp_path / "models", model_sha256=""))
    assert rc != 0 and "model_sha256 needs the file's 64-hex sha256" in out, out[-3000:]
    assert not (tmp_path / "models").exists()
