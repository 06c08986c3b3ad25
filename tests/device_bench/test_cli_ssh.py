"""The acceptance contract of ``edgeslim bench`` over SSH, run as a real subprocess against the real sshd."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from bench_fixtures import SshServer


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # wide: rich breaks a long path inside a word at 80 columns (pytest-xdist's tmp paths are 10 characters longer)
    return subprocess.run([sys.executable, "-m", "edgeslim.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, check=False, env={**os.environ, "COLUMNS": "400"})


def test_bench_ssh_json_contract(sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    proc = _cli("bench", str(models["small"]), "--target", sshd.url, "--identity", str(sshd.key), "--known-hosts",
                str(sshd.known_hosts), "--runs", "10", "--json", "--python", sys.executable, "--workdir",
                str(tmp_path / "remote"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["results"][0]["p50"] > 0 and summary["p50"] == summary["results"][0]["p50"]
    assert summary["target"] == sshd.url and summary["results"][0]["runs"] == 10
    assert "p50 ms" in proc.stderr  # the table goes to stderr
    assert json.loads((tmp_path / "edgeslim-bench.jsonl").read_text().splitlines()[-1])["status"] == "ok"


def test_bench_ssh_unknown_host_key_exits_nonzero_with_advice(sshd: SshServer, models: dict[str, Path],
                                                              tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    proc = _cli("bench", str(models["small"]), "--target", sshd.url, "--identity", str(sshd.key), "--known-hosts",
                str(known), "--runs", "10", "--json", cwd=tmp_path)
    assert proc.returncode != 0
    err = " ".join(proc.stderr.split())
    fp = subprocess.run(["ssh-keygen", "-lf", str(sshd.dir / "host_key.pub")], capture_output=True, text=True,
                        check=True).stdout.split()[1]
    assert "HostKeyError" in err and f"ssh-ed25519 {fp}" in err and "ssh-keyscan" not in err
    assert f"edgeslim device trust {sshd.url} --fingerprint {fp} --known-hosts {known}" in err
    assert proc.stdout.strip() == "" and known.read_text() == ""


def test_device_check_over_ssh(sshd: SshServer, tmp_path: Path) -> None:
    proc = _cli("device", "check", sshd.url, "--identity", str(sshd.key), "--known-hosts", str(sshd.known_hosts),
                "--python", sys.executable, "--workdir", str(tmp_path / "remote"), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["machine"] == platform.machine()  # the fixture's sshd runs on this machine
    assert info["runtimes"]["onnxruntime"] and info["numpy_version"] and info["free_bytes"] > 0
    assert not any("onnxruntime" in f for f in info["fixes"])
