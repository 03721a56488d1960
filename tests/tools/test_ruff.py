"""One lint configuration for the whole tree (ruff.toml), clean: the Python this repository ships
and tests with follows it, not only the files a change happened to touch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_is_clean_on_the_whole_tree():
    ruff = Path(sys.executable).parent / "ruff"
    proc = subprocess.run([str(ruff), "check", "--output-format", "concise", "."], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"ruff check found problems (ruff.toml):\n{proc.stdout}{proc.stderr}"
