"""The collection's fast checks: specs match defaults, early failures on bad input, CPU flags per target."""
from __future__ import annotations

import importlib.util
import re

import pytest
import yaml

from conftest import COLLECTION, REPO, ROLES

NODE_ROLES = ["base", "llama_cpp", "llama_cpp_python", "model", "backend"]


def _load(path):
    return yaml.safe_load(path.read_text()) or {}


@pytest.mark.parametrize("role", NODE_ROLES + (["web"] if (ROLES / "web").is_dir() else []))
def test_argument_specs_describe_every_default(role):
    """Every variable is in both defaults/main.yml and meta/argument_specs.yml, with the same default."""
    defaults = _load(ROLES / role / "defaults" / "main.yml")
    options = _load(ROLES / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options), f"{role}: defaults and argument_specs disagree"
    for name, spec in options.items():
        assert spec.get("description"), f"{role}: {name} has no description"
        if "default" in spec and "{{" not in str(defaults[name]):
            assert spec["default"] == defaults[name], f"{role}: {name} default differs between the two files"
        if "choices" in spec:
            assert defaults[name] in spec["choices"], f"{role}: default of {name} is not one of its choices"


def test_every_role_reads_as_its_life():
    """tasks/main.yml of each role: preflight first (always), then install/configure/run, each tagged."""
    for role in NODE_ROLES:
        tasks = _load(ROLES / role / "tasks" / "main.yml")
        names = [t["name"] for t in tasks]
        assert names[0] == "Preflight" and tasks[0]["tags"] == ["always"], role
        assert set(names[1:]) <= {"Install", "Configure", "Run"}, role
        for t in tasks[1:]:
            assert f"{role}_{t['name'].lower()}" in t["tags"] and t["name"].lower() in t["tags"], role


def _site_play() -> str:
    return (REPO / "playbooks" / "site.yml").read_text()


def test_bad_variable_fails_before_any_change(playbook):
    """A bad value for a later role stops the site playbook at its first task, naming the variable."""
    rc, out = playbook(_site_play(), "--check", "-e", "llama_cpp_blas=sometimes", "-e", "backend_port=http")
    assert rc != 0
    assert "llama_cpp_blas" in out and "backend_port" in out, out[-3000:]
    assert "Check every variable" in out
    recap = re.search(r"localhost\s+: ok=(\d+)\s+changed=(\d+)", out)
    assert recap and recap.group(2) == "0", out[-2000:]
    assert "ampere.llm.base : Install" not in out and "Install the build and runtime packages" not in out


def test_unsupported_system_fails_at_once(playbook):
    facts = ('{"ansible_facts": {"distribution": "CentOS", "distribution_major_version": "9",'
             ' "distribution_version": "9.4", "architecture": "x86_64"}}')
    rc, out = playbook(_site_play(), "--check", "-e", facts)
    assert rc != 0
    assert "supports Ubuntu 22.04, Ubuntu 24.04 and Debian 12" in out and "CentOS 9 on x86_64" in out, out[-3000:]
    assert "Install the build and runtime packages" not in out


def test_unsupported_architecture_fails_at_once(playbook):
    facts = ('{"ansible_facts": {"distribution": "Ubuntu", "distribution_major_version": "22",'
             ' "distribution_version": "22.04", "architecture": "ppc64le"}}')
    rc, out = playbook(_site_play(), "--check", "-e", facts)
    assert rc != 0 and "Ubuntu 22.04 on ppc64le" in out, out[-3000:]


# --- CPU flags (the filter ampere.llm.llama_cpp_cpu) -------------------------------------------------

ALTRA = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
"""
AMPEREONE = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp flagm2 frint i8mm bf16 rng bti ecv
CPU implementer\t: 0xc0
CPU part\t: 0xac3
"""
GRAVITON3 = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""
X86 = "processor\t: 0\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2 avx512f\n"


@pytest.fixture(scope="module")
def cpu():
    spec = importlib.util.spec_from_file_location("llama_cpp_filter", COLLECTION / "plugins" / "filter" / "llama_cpp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.llama_cpp_cpu


def test_altra_portable_is_neoverse_n1_baseline(cpu):
    r = cpu(ALTRA, "aarch64", "portable")
    assert r["family"] == "altra" and r["features"] == ["dotprod", "fp16"]
    assert "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16" in r["cmake_args"]
    assert "-DCMAKE_C_FLAGS=-mtune=neoverse-n1" in r["cmake_args"] and "-DGGML_NATIVE=OFF" in r["cmake_args"]


def test_ampereone_portable_has_i8mm_and_bf16(cpu):
    r = cpu(AMPEREONE, "aarch64", "portable")
    assert r["family"] == "ampereone" and {"i8mm", "bf16", "dotprod", "fp16"} <= set(r["features"])
    assert "sve" not in r["features"]
    assert "-DGGML_CPU_ARM_ARCH=armv8.6-a+dotprod+fp16+i8mm+bf16" in r["cmake_args"]


def test_unknown_arm_core_gets_what_it_has(cpu):
    r = cpu(GRAVITON3, "aarch64", "portable")
    assert r["family"] == "generic"
    assert "-DGGML_CPU_ARM_ARCH=armv8.6-a+bf16+dotprod+fp16+i8mm+sve" in r["cmake_args"]


def test_native_and_forced_family(cpu):
    assert cpu(ALTRA, "aarch64", "native")["cmake_args"] == ["-DGGML_NATIVE=ON"]
    # Building on an Altra for an AmpereOne pool: the family can be named.
    assert "-DGGML_CPU_ARM_ARCH=armv8.6-a+dotprod+fp16+i8mm+bf16" in cpu(ALTRA, "aarch64", "portable", "ampereone")["cmake_args"]


def test_x86(cpu):
    assert cpu(X86, "x86_64", "portable")["cmake_args"] == ["-DGGML_NATIVE=OFF"]
    assert cpu(X86, "x86_64", "native")["cmake_args"] == ["-DGGML_NATIVE=ON"]
    assert {"avx2", "fma", "f16c"} <= set(cpu(X86, "x86_64")["features"])


def test_bad_cpu_inputs(cpu):
    from ansible.errors import AnsibleFilterError
    with pytest.raises(AnsibleFilterError, match="native or portable"):
        cpu(X86, "x86_64", "fast")
    with pytest.raises(AnsibleFilterError, match="architecture"):
        cpu("", "riscv64")


def test_build_identity_follows_pin_and_flags(playbook, tmp_path):
    """The build directory is keyed by commit + flags: same inputs, same build; a new flag or pin, a new one."""
    prefix = tmp_path / "builds"
    prefix.mkdir()

    def build_id(*extra: str) -> str:
        rc, out = playbook("- hosts: llm_nodes\n  roles: [ampere.llm.llama_cpp]\n", "--check",
                           "-e", f"llama_cpp_prefix={prefix}", *extra)
        assert rc == 0, out[-3000:]
        return re.search(r"would build llama.cpp (\S+) with", out).group(1)

    plain = build_id()
    assert plain.startswith("0c1e57098bba43ac29e6e3b677cdceebdd22334f-") and build_id() == plain
    assert build_id("-e", "llama_cpp_blas=on") != plain
    assert build_id("-e", "llama_cpp_cpu_target=native") != plain
    assert build_id("-e", "llama_cpp_commit=" + "1" * 40).startswith("1" * 40 + "-")
    assert not any(prefix.iterdir())  # check mode built nothing
