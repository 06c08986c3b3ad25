"""device_bench fixtures: ``sshd`` (a real OpenSSH server), ``board`` (the emulated aarch64 device), ``models``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_fixtures import board, models, sshd

__all__ = ["board", "models", "sshd"]
