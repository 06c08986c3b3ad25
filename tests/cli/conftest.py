from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EDGESLIM = [sys.executable, "-m", "edgeslim.cli"]


def run_cli(*args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    """Run the real ``edgeslim`` command in a subprocess (400 columns: a long temporary path, e.g. under
    pytest-xdist's ``popen-gwN`` folders, is never wrapped inside the messages the tests read)."""
    env = {**os.environ, "COLUMNS": "400"}
    proc = subprocess.run([*EDGESLIM, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"edgeslim {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def last_json(proc: subprocess.CompletedProcess[str]) -> dict:
    """The JSON object on the last stdout line."""
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines, f"no stdout; stderr:\n{proc.stderr}"
    return json.loads(lines[-1])


@pytest.fixture
def cli() -> object:
    return run_cli


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "out"
