"""Fixtures of the OCI tests: the collection on sys.path, a signing key + config, the local OCI stand-in."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))
