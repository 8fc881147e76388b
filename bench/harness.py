"""What the benches share: where the repository is, and how a run describes itself."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
