"""CPU flags for building llama.cpp on the target: the filter `ampere.llm.llama_cpp_cpu`.

Given /proc/cpuinfo, the architecture and the build target (`native` for this CPU only,
`portable` for every host of its family, which is what a captured image needs), returns the
CPU family, the features llama.cpp's kernels care about, and the CMake arguments that select them.
Pure function of its inputs, so it is unit-tested with the cpuinfo of machines we do not have.
"""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

# Arm families by (CPU implementer, CPU part) from /proc/cpuinfo. `march` is the baseline every
# member of the family has; `mtune` is the core GCC schedules for (-march + -mtune == -mcpu=<core>).
ARM_FAMILIES = {
    "altra": {  # Ampere Altra / Altra Max (OCI A1, A2 shapes): Neoverse N1 cores
        "match": [("0x41", "0xd0c")],
        "march": "armv8.2-a+dotprod+fp16",
        "mtune": "neoverse-n1",
    },
    "ampereone": {  # AmpereOne (OCI A4 shapes): Ampere's own cores, Armv8.6 with i8mm and bf16, no SVE
        "match": [("0xc0", None)],
        "march": "armv8.6-a+dotprod+fp16+i8mm+bf16",
        "mtune": "ampere1",
    },
}
# cpuinfo feature names -> the names llama.cpp (and GCC's +extensions) use.
ARM_FEATURES = {"asimddp": "dotprod", "fphp": "fp16", "i8mm": "i8mm", "bf16": "bf16", "sve": "sve"}
X86_FEATURES = ("avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")


def _fields(cpuinfo: str) -> dict[str, str]:
    """First value of each `key : value` line (all cores of these machines are alike)."""
    out: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() not in out:
            out[key.strip().lower()] = value.strip()
    return out


def _arm_family(fields: dict[str, str]) -> str:
    implementer = fields.get("cpu implementer", "").lower()
    part = fields.get("cpu part", "").lower()
    for name, fam in ARM_FAMILIES.items():
        for impl, prt in fam["match"]:
            if implementer == impl and (prt is None or part == prt):
                return name
    return "generic"


def llama_cpp_cpu(cpuinfo: str, arch: str, target: str = "portable", family: str = "auto") -> dict:
    """CPU description and CMake arguments for llama.cpp on this host."""
    if target not in ("native", "portable"):
        raise AnsibleFilterError(f"llama_cpp_cpu_target must be native or portable, not {target!r}")
    fields = _fields(cpuinfo or "")
    if arch == "aarch64":
        flags = set(fields.get("features", "").split())
        features = sorted(name for cpu_name, name in ARM_FEATURES.items() if cpu_name in flags)
        fam = _arm_family(fields) if family == "auto" else family
        if fam not in ARM_FAMILIES and fam != "generic":
            raise AnsibleFilterError(f"llama_cpp_arm_family must be auto, generic or one of "
                                     f"{sorted(ARM_FAMILIES)}, not {fam!r}")
        if target == "native":
            args = ["-DGGML_NATIVE=ON"]
        elif fam == "generic":
            # Unknown Arm core: the features this one has, on the lowest architecture that has them all.
            base = "armv8.6-a" if "i8mm" in features or "bf16" in features else "armv8.2-a"
            args = ["-DGGML_NATIVE=OFF", f"-DGGML_CPU_ARM_ARCH={base}{''.join('+' + f for f in features)}"]
        else:
            spec = ARM_FAMILIES[fam]
            args = ["-DGGML_NATIVE=OFF", f"-DGGML_CPU_ARM_ARCH={spec['march']}",
                    f"-DCMAKE_C_FLAGS=-mtune={spec['mtune']}", f"-DCMAKE_CXX_FLAGS=-mtune={spec['mtune']}"]
        return {"arch": arch, "target": target, "family": fam, "features": features, "cmake_args": args}
    if arch == "x86_64":
        flags = set(fields.get("flags", "").split())
        features = [f for f in X86_FEATURES if f in flags]
        # Portable is ggml's non-native default: AVX2, FMA, F16C, BMI2 (x86-64-v3), no AVX-512,
        # so the image runs on any x86 server of the last decade.
        args = ["-DGGML_NATIVE=ON"] if target == "native" else ["-DGGML_NATIVE=OFF"]
        return {"arch": arch, "target": target, "family": "x86_64", "features": features, "cmake_args": args}
    raise AnsibleFilterError(f"no llama.cpp CPU flags for architecture {arch!r} (x86_64 or aarch64)")


class FilterModule:
    def filters(self):
        return {"llama_cpp_cpu": llama_cpp_cpu}
