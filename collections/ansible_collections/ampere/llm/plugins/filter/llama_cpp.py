"""CPU flags for building llama.cpp on the target: the filter `ampere.llm.llama_cpp_cpu`.

Given /proc/cpuinfo, the architecture and the build target, returns the CPU family, the features
llama.cpp's kernels care about that this host has, the features the chosen flags require, and the
CMake arguments that select them. Targets:

  portable          the baseline of this host's family, so a captured image runs on every host of it
                    (Altra -> Altra, AmpereOne -> AmpereOne, unknown Arm core -> what it has)
  native            this CPU exactly (-mcpu=native / -march=native): an image runs only on this CPU family
  altra             Ampere Altra / Altra Max, Neoverse N1 (alias neoverse-n1)      } for building on one
  ampereone         AmpereOne (OCI A2 and later), Ampere's own Armv8.6+ core        } machine for another
  generic-armv8.2   any Neoverse N1 or newer Arm server core (dotprod, fp16), untuned  }

Pure function of its inputs, so it is unit-tested with the cpuinfo of machines we do not have
(tests/collection/test_cpu_flags.py; the captured lines are cited there).
"""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

# What llama.cpp's CPU backend (ggml-cpu) compiles special kernels for on Arm at the pinned commit,
# by the ACLE macro it tests: __ARM_FEATURE_DOTPROD, _FP16_VECTOR_ARITHMETIC, _MATMUL_INT8 (i8mm),
# _SVE, _SVE2, _SME (ggml/src/ggml-cpu/arch/arm/*, CMakeLists.txt). bf16 is not in the list: ggml
# converts bf16 in software there, so the hardware's bf16 buys nothing yet (AmpereOne has it, and
# armv8.6-a enables it anyway). Keys are the names in /proc/cpuinfo's Features line.
ARM_FEATURES = {"asimddp": "dotprod", "fphp": "fp16", "i8mm": "i8mm", "sve": "sve", "sve2": "sve2", "sme": "sme"}
# Order in which extensions are appended to -march (GCC accepts any order; a fixed one keeps the
# build identity stable).
ARM_ORDER = ("dotprod", "fp16", "i8mm", "sve", "sve2", "sme")

# Arm families by (CPU implementer, CPU part) from /proc/cpuinfo. `features` is the baseline every
# member has (and llama.cpp uses); `march` the architecture level of the family; `mtune` the core
# GCC 12 (Debian 12, Ubuntu 22.04) schedules for: -march + -mtune is -mcpu=<core> without its
# extras the kernels do not use.
ARM_FAMILIES = {
    # Ampere Altra / Altra Max (OCI A1 shapes): Arm Neoverse N1 cores, Armv8.2 + dotprod + fp16.
    "altra": {
        "match": [("0x41", "0xd0c")],
        "features": ("dotprod", "fp16"),
        "march": "armv8.2-a",
        "mtune": "neoverse-n1",
    },
    # AmpereOne (OCI A2: part 0xac3; AmpereOne M/X, OCI A4: 0xac4): Ampere's own Armv8.6+ cores with
    # i8mm and bf16 and NO SVE. GCC 12 knows `ampere1` (ampere1a arrives in GCC 13), which fits both.
    "ampereone": {
        "match": [("0xc0", "0xac3"), ("0xc0", "0xac4")],
        "features": ("dotprod", "fp16", "i8mm"),
        "march": "armv8.6-a",
        "mtune": "ampere1",
    },
}
# Named targets that are not a detected family: the common floor of Arm server cores since N1.
ARM_GENERIC = {
    "generic-armv8.2": {"features": ("dotprod", "fp16"), "march": "armv8.2-a", "mtune": None},
}
ALIASES = {"neoverse-n1": "altra"}
TARGETS = ("portable", "native", *ARM_FAMILIES, *ARM_GENERIC, *ALIASES)
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
        if (implementer, part) in fam["match"]:
            return name
    return "generic"


def _arm_args(march: str, features, mtune: str | None) -> list[str]:
    ordered = [f for f in ARM_ORDER if f in features]
    args = ["-DGGML_NATIVE=OFF", f"-DGGML_CPU_ARM_ARCH={march}{''.join('+' + f for f in ordered)}"]
    if mtune:
        args += [f"-DCMAKE_C_FLAGS=-mtune={mtune}", f"-DCMAKE_CXX_FLAGS=-mtune={mtune}"]
    return args


def _aarch64(fields: dict[str, str], target: str) -> dict:
    known = "features" in fields
    host = {ARM_FEATURES[f] for f in fields.get("features", "").split() if f in ARM_FEATURES}
    features = [f for f in ARM_ORDER if f in host]
    family = _arm_family(fields)
    if target in ("portable", "native") and not known:
        # Under qemu-user (before QEMU 8.2) /proc/cpuinfo is the x86 host's; some hypervisors blank it.
        # Guessing would build either too little (slow) or too much (SIGILL on the first token).
        raise AnsibleFilterError(
            f"llama_cpp_cpu_target={target} needs the CPU features, but /proc/cpuinfo of this aarch64 host "
            "has no Features line (emulated or hidden CPU). Name the family the nodes run instead: "
            f"llama_cpp_cpu_target: one of {', '.join(list(ARM_FAMILIES) + list(ARM_GENERIC))}.")
    if target == "native":
        # GCC resolves -mcpu=native from this host: the build needs exactly this CPU (or a superset).
        return {"family": family, "features": features, "requires": features,
                "runs_on": "this CPU model only", "cmake_args": ["-DGGML_NATIVE=ON"]}
    if target == "portable" and family == "generic":
        # An Arm core we have no family for: exactly the kernels' features it has, on the lowest
        # level that takes them as extensions (armv8.2-a + ... keeps v8.5/8.6 instructions out).
        return {"family": family, "features": features, "requires": features,
                "runs_on": "Arm cores with " + (", ".join(features) or "plain Armv8.2"),
                "cmake_args": _arm_args("armv8.2-a", features, None)}
    if target == "portable":
        spec = ARM_FAMILIES[family]
        # The family's baseline, as far as this host shows it: a VM that hides i8mm gets none.
        required = [f for f in spec["features"] if f in host]
        return {"family": family, "features": features, "requires": required,
                "runs_on": f"every {family} host", "cmake_args": _arm_args(spec["march"], required, spec["mtune"])}
    # A named family: the build may run elsewhere than here (bake on Altra for AmpereOne, say).
    spec = ARM_FAMILIES.get(target) or ARM_GENERIC[target]
    return {"family": target if target in ARM_FAMILIES else "generic", "features": features,
            "requires": list(spec["features"]), "runs_on": f"every {target} host",
            "cmake_args": _arm_args(spec["march"], spec["features"], spec["mtune"])}


def llama_cpp_cpu(cpuinfo: str, arch: str, target: str = "portable") -> dict:
    """CPU description and CMake arguments for llama.cpp built on this host for `target`.

    `missing` lists what the flags need and this host lacks (known only when cpuinfo shows the
    features): such a build cannot be run here, only shipped to the hosts it was made for.
    """
    target = str(target).lower()
    if target not in TARGETS:
        raise AnsibleFilterError(f"llama_cpp_cpu_target must be one of {', '.join(TARGETS)}, not {target!r}")
    target = ALIASES.get(target, target)
    fields = _fields(cpuinfo or "")
    if arch == "aarch64":
        out = _aarch64(fields, target)
        known = "features" in fields
        missing = [f for f in out["requires"] if known and f not in out["features"]]
        return {"arch": arch, "target": target, "features_known": known, "missing": missing, **out}
    if arch == "x86_64":
        if target not in ("portable", "native"):
            raise AnsibleFilterError(f"llama_cpp_cpu_target={target} is an Arm (aarch64) target; "
                                     "on x86_64 use portable or native")
        flags = set(fields.get("flags", "").split())
        features = [f for f in X86_FEATURES if f in flags]
        # Portable is ggml's non-native default: AVX2, FMA, F16C, BMI2 (x86-64-v3), no AVX-512,
        # so the image runs on any x86 server of the last decade.
        args = ["-DGGML_NATIVE=ON"] if target == "native" else ["-DGGML_NATIVE=OFF"]
        return {"arch": arch, "target": target, "family": "x86_64", "features": features,
                "features_known": "flags" in fields, "requires": [], "missing": [],
                "runs_on": "this CPU model only" if target == "native" else "x86-64-v3 (AVX2) hosts",
                "cmake_args": args}
    raise AnsibleFilterError(f"no llama.cpp CPU flags for architecture {arch!r} (x86_64 or aarch64)")


class FilterModule:
    def filters(self):
        return {"llama_cpp_cpu": llama_cpp_cpu}
