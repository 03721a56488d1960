"""CPU flags per target (the filter ampere.llm.llama_cpp_cpu), from the /proc/cpuinfo of real machines.

The captured lines, and where they come from (public, quoted as found):
- Ampere Altra (Neoverse N1, OCI A1): the cpuinfo posted in ryanfortner/box64-debs issue #34
  ("Add builds for Ampere Altra"), with `gcc -mcpu=native` resolving to neoverse-n1+crc+crypto+ssbs.
- AmpereOne (OCI A2, part 0xac3): hrw/arm-socs-table cpuinfo-data/ampere-ampereone; the same Features
  line (plus paca pacg) is quoted from an OCI VM.Standard.A2.Flex in a public project's notes
  ("NO sve, NO sve2, has i8mm and bf16").
- AmpereOne M/X (part 0xac4, GCC's ampere1a): hrw/arm-socs-table cpuinfo-data/ampere-ampere1a.
- AWS Graviton3 (Neoverse V1, an Arm core with no family here): the DEFAULT_G3 features of
  firecracker's aarch64 CPU tests plus SVE, as in hrw/arm-socs-table cpuinfo-data/graviton3.
- qemu-user 7.2 (Debian 12) shows the x86 host's cpuinfo to arm64 programs: no Features line.
"""
from __future__ import annotations

import importlib.util

import pytest
from conftest import COLLECTION

ALTRA = """processor       : 0
BogoMIPS        : 50.00
Features        : fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer : 0x41
CPU architecture: 8
CPU variant     : 0x3
CPU part        : 0xd0c
CPU revision    : 1
"""
AMPEREONE = """processor       : 0
BogoMIPS        : 50.00
Features        : fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 asimddp sha512 asimdfhm dit uscat ilrcpc flagm ssbs sb dcpodp flagm2 frint i8mm bf16 rng bti ecv
CPU implementer : 0xc0
CPU architecture: 8
CPU variant     : 0x0
CPU part        : 0xac3
CPU revision    : 1
"""
AMPEREONE_M = """BogoMIPS\t: 2000.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp flagm2 frint i8mm bf16 rng bti ecv
CPU implementer\t: 0xc0
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xac4
CPU revision\t: 0
"""
GRAVITON3 = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""
# An Altra VM whose hypervisor hides fp16 (the baseline follows what the host shows).
ALTRA_NO_FP16 = ALTRA.replace(" fphp asimdhp", "")
X86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2 avx512f\n"
QEMU_USER = X86  # what /proc/cpuinfo reads like inside the arm64 container under qemu-user 7.2


@pytest.fixture(scope="module")
def cpu():
    spec = importlib.util.spec_from_file_location("llama_cpp_filter", COLLECTION / "plugins" / "filter" / "llama_cpp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.llama_cpp_cpu


def arch_flag(r) -> str:
    return next(a for a in r["cmake_args"] if a.startswith("-DGGML_CPU_ARM_ARCH="))


def test_altra_portable_is_neoverse_n1_baseline(cpu):
    r = cpu(ALTRA, "aarch64", "portable")
    assert r["family"] == "altra" and r["features"] == ["dotprod", "fp16"] and r["missing"] == []
    assert arch_flag(r) == "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16"
    assert "-DCMAKE_C_FLAGS=-mtune=neoverse-n1" in r["cmake_args"] and "-DGGML_NATIVE=OFF" in r["cmake_args"]


@pytest.mark.parametrize("cpuinfo", [AMPEREONE, AMPEREONE_M], ids=["A2-0xac3", "M-0xac4"])
def test_ampereone_portable_has_i8mm_and_no_sve(cpuinfo, cpu):
    r = cpu(cpuinfo, "aarch64", "portable")
    assert r["family"] == "ampereone" and r["features"] == ["dotprod", "fp16", "i8mm"] and r["missing"] == []
    # armv8.6-a brings bf16 along; llama.cpp has no bf16 kernels at this pin, so it is not asked for.
    assert arch_flag(r) == "-DGGML_CPU_ARM_ARCH=armv8.6-a+dotprod+fp16+i8mm"
    assert "-DCMAKE_CXX_FLAGS=-mtune=ampere1" in r["cmake_args"]
    assert "sve" not in arch_flag(r)


def test_unknown_arm_core_gets_exactly_what_it_has(cpu):
    r = cpu(GRAVITON3, "aarch64", "portable")
    assert r["family"] == "generic" and r["features"] == ["dotprod", "fp16", "i8mm", "sve"]
    # On armv8.2-a: a v8.4 core must not receive v8.5/8.6 instructions it lacks (frint, sb).
    assert arch_flag(r) == "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16+i8mm+sve"
    assert not any("mtune" in a for a in r["cmake_args"])


def test_portable_follows_what_the_host_shows(cpu):
    r = cpu(ALTRA_NO_FP16, "aarch64", "portable")
    assert r["family"] == "altra" and arch_flag(r) == "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod"


def test_native_is_this_cpu_only(cpu):
    for info in (ALTRA, AMPEREONE):
        r = cpu(info, "aarch64", "native")
        assert r["cmake_args"] == ["-DGGML_NATIVE=ON"] and r["runs_on"] == "this CPU model only"


def test_named_family_builds_for_other_hosts(cpu):
    # Baking on an Altra for an AmpereOne pool: the flags are AmpereOne's, and the role is told that
    # this host cannot run the result (it skips its run check instead of dying with SIGILL).
    r = cpu(ALTRA, "aarch64", "ampereone")
    assert arch_flag(r) == "-DGGML_CPU_ARM_ARCH=armv8.6-a+dotprod+fp16+i8mm" and r["missing"] == ["i8mm"]
    # The other way round runs anywhere newer.
    assert cpu(AMPEREONE, "aarch64", "altra")["missing"] == []
    assert cpu(AMPEREONE, "aarch64", "neoverse-n1") == {**cpu(AMPEREONE, "aarch64", "altra"), "target": "altra"}
    g = cpu(AMPEREONE, "aarch64", "generic-armv8.2")
    assert arch_flag(g) == "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16" and not any("mtune" in a for a in g["cmake_args"])


def test_emulated_cpuinfo_needs_a_named_family(cpu):
    from ansible.errors import AnsibleFilterError
    for target in ("portable", "native"):
        with pytest.raises(AnsibleFilterError, match="no Features line.*llama_cpp_cpu_target: one of altra, ampereone"):
            cpu(QEMU_USER, "aarch64", target)
    r = cpu(QEMU_USER, "aarch64", "ampereone")
    assert r["features_known"] is False and r["missing"] == []  # unknown, so not claimed missing
    assert arch_flag(r) == "-DGGML_CPU_ARM_ARCH=armv8.6-a+dotprod+fp16+i8mm"


def test_x86(cpu):
    assert cpu(X86, "x86_64", "portable")["cmake_args"] == ["-DGGML_NATIVE=OFF"]
    assert cpu(X86, "x86_64", "native")["cmake_args"] == ["-DGGML_NATIVE=ON"]
    assert {"avx2", "fma", "f16c"} <= set(cpu(X86, "x86_64")["features"])


def test_bad_cpu_inputs(cpu):
    from ansible.errors import AnsibleFilterError
    with pytest.raises(AnsibleFilterError, match="must be one of portable, native, altra"):
        cpu(X86, "x86_64", "fast")
    with pytest.raises(AnsibleFilterError, match="ampereone is an Arm"):
        cpu(X86, "x86_64", "ampereone")
    with pytest.raises(AnsibleFilterError, match="architecture"):
        cpu("", "riscv64")


def test_role_stops_early_on_an_arm_target_for_x86(playbook):
    """The role's preflight turns a target that cannot fit this host into a clear failure, before any build."""
    rc, out = playbook("- hosts: llm_nodes\n  roles: [ampere.llm.llama_cpp]\n", "--check",
                       "-e", "llama_cpp_cpu_target=ampereone")
    assert rc != 0 and "llama_cpp_cpu_target=ampereone is an Arm (aarch64) target" in out, out[-3000:]
    assert "would build llama.cpp" not in out
