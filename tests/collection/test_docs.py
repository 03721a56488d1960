"""What `ansible-doc` shows users of the collection's own plugins (the OCI modules: tests/oci):
the filter ampere.llm.llama_cpp_cpu is documented, and model_fetch has working examples."""
from __future__ import annotations

import json
import subprocess

import yaml
from conftest import BIN, REPO, ansible_env


def _doc(*args: str) -> dict:
    r = subprocess.run([str(BIN / "ansible-doc"), "--json", *args], cwd=REPO, env=ansible_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    (entry,) = json.loads(r.stdout).values()
    return entry


def test_filter_is_documented():
    entry = _doc("-t", "filter", "ampere.llm.llama_cpp_cpu")
    doc = entry["doc"]
    assert doc["short_description"] and set(doc["options"]) == {"_input", "arch", "target"}
    assert "ampere.llm.llama_cpp_cpu" in entry["examples"]
    assert "cmake_args" in entry["return"]["_value"]["contains"]


def test_model_fetch_examples_use_its_options():
    entry = _doc("-t", "module", "ampere.llm.model_fetch")
    options = set(entry["doc"]["options"])
    tasks = yaml.safe_load(entry["examples"])
    used = [t["ampere.llm.model_fetch"] for t in tasks if "ampere.llm.model_fetch" in t]
    assert {u["source"] for u in used} == {"hf", "url", "file"}  # one example per source
    for args in used:
        assert set(args) <= options, set(args) - options
        assert {"dest", "sha256", "source"} <= set(args)
