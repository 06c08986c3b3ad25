"""``edgeslim device check`` on the local target (the SSH variants run in tests/device_bench)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path


def test_device_check_local_json(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "edgeslim.cli", "device", "check", "local", "--workdir",
                           str(tmp_path / "wd"), "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["machine"] == platform.machine() and info["python"] == platform.python_version()
    assert info["runtimes"]["onnxruntime"] and info["free_bytes"] > 0 and info["cpu_cores"] >= 1
    assert "onnxruntime" in proc.stderr


def test_device_unknown_target(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "edgeslim.cli", "device", "check", "nosuchboard", "--devices",
                           str(tmp_path / "none.toml")], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "does not exist" in " ".join(proc.stderr.split())


def test_device_trust_refuses_local_and_malformed_fingerprints(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "edgeslim.cli", "device", "trust"]
    proc = subprocess.run([*base, "local", "--fingerprint", "SHA256:" + "A" * 43], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2 and "not an SSH device" in " ".join(proc.stderr.split())
    known = tmp_path / "known_hosts"
    proc = subprocess.run([*base, "ssh://pi@127.0.0.1:1", "--fingerprint", "MD5:aa:bb", "--known-hosts", str(known)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "not an OpenSSH SHA256 fingerprint" in " ".join(proc.stderr.split())
    assert not known.exists()
