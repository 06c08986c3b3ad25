"""A fleet of boards: ``bench_fleet`` / ``edgeslim bench ART --target A --target B`` on this machine and the real sshd.

The two devices are ``local`` and a devices-file entry for the test sshd (its own work dir, so the
agents' on-device locks do not serialise them); the unreachable one is a closed port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench_fixtures import SshServer, free_port

from edgeslim.device_bench import bench_fleet, read_jsonl
from edgeslim.device_bench.errors import DeviceBusyError, DeviceConfigError
from edgeslim.device_bench.locks import device_lock
from edgeslim.device_bench.targets import DeviceOptions


def _devices_file(sshd: SshServer, tmp_path: Path) -> Path:
    path = tmp_path / "devices.toml"
    path.write_text(f'[devices.lab]\nhost = "127.0.0.1"\nport = {sshd.port}\nuser = "{sshd.user}"\n'
                    f'workdir = "{tmp_path / "lab-wd"}"\n')
    return path


def _options(sshd: SshServer, devices: Path) -> DeviceOptions:
    return DeviceOptions(identity=str(sshd.key), known_hosts=str(sshd.known_hosts), python=sys.executable,
                         allow_agent=False, connect_timeout=10.0, devices_file=str(devices))


def test_fleet_runs_devices_concurrently_and_survives_an_unreachable_one(
        sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    closed = free_port()
    dead = f"ssh://{sshd.user}@127.0.0.1:{closed}"
    arts = [models["small"], models["big"]]
    fleet = bench_fleet(arts, ["local", "lab", dead], runs=20, warmup=2, results_file=tmp_path / "r.jsonl",
                        options=_options(sshd, _devices_file(sshd, tmp_path)), lock_dir=tmp_path / "locks")
    local, lab, down = fleet.runs
    assert (local.status, lab.status, down.status) == ("ok", "ok", "failed")
    assert lab.device == sshd.url and [r.data["runs"] for r in [*local.results, *lab.results]] == [20] * 4
    # concurrent: each device's bench started before the other's ended (run one after the other, they would not)
    assert max(local.started_at, lab.started_at) < min(local.finished_at, lab.finished_at)  # type: ignore[type-var]
    # the unreachable board: every artefact a failed row naming the host and what to do
    assert down.error and f"127.0.0.1:{closed} refused" in down.error and "start sshd on the device" in down.error
    assert [r.error for r in down.results] == [down.error, down.error]
    records = read_jsonl(tmp_path / "r.jsonl")
    assert sorted((r["target"], r["status"]) for r in records) == sorted(
        [("local", "ok")] * 2 + [(sshd.url, "ok")] * 2 + [(dead, "failed")] * 2)
    assert all(r["error"] == down.error for r in records if r["status"] == "failed")
    summary = fleet.summary()
    assert [t["target"] for t in summary["targets"]] == ["local", "lab", dead] and summary["failures"] == 2
    for row, i in zip(summary["comparison"]["rows"], range(2), strict=True):
        assert row["p50"]["lab"] == lab.results[i].p50 and row["p50"][dead] is None
        assert row["ratio"]["lab"] == pytest.approx(lab.results[i].p50 / local.results[i].p50)  # type: ignore[operator]
        assert row["ratio"]["local"] == 1.0 and row["ratio"][dead] is None


def test_fleet_refuses_the_same_device_twice_before_running(sshd: SshServer, models: dict[str, Path],
                                                            tmp_path: Path) -> None:
    with pytest.raises(DeviceConfigError, match=r"targets 'lab' and '.*' are the same device \(ssh://"):
        bench_fleet(models["small"], ["lab", sshd.url], options=_options(sshd, _devices_file(sshd, tmp_path)),
                    results_file=tmp_path / "r.jsonl", lock_dir=tmp_path / "locks")
    assert not (tmp_path / "r.jsonl").exists()


def test_device_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    dev = "ssh://pi@10.0.0.5:22"
    message = (rf"{dev} is busy: another edgeslim bench \(pid {os.getpid()} since .*\) holds its lock "
               rf"{tmp_path}/ssh_pi_10\.0\.0\.5_22\.lock; wait for it to finish or drop --target pi4 from this run")
    with device_lock(dev, "pi4", tmp_path), pytest.raises(DeviceBusyError, match=message), \
            device_lock(dev, "pi4", tmp_path):
        pass
    with device_lock(dev, "pi4", tmp_path):  # released when the holder's block ended
        pass


def _cli(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeslim.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, check=False, env={**os.environ, "EDGESLIM_CACHE": str(cache), "COLUMNS": "400"})


def test_cli_fleet_busy_device_report_and_force(sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    """A device another run holds is refused with a clear message; the other device's tables and report are written."""
    devices = _devices_file(sshd, tmp_path)
    args = ["bench", str(models["small"]), "--target", "local", "--target", "lab", "--devices", str(devices),
            "--identity", str(sshd.key), "--known-hosts", str(sshd.known_hosts), "--python", sys.executable,
            "--runs", "10", "--results", "r.jsonl", "--report", "out/fleet.json", "--json"]
    with device_lock("local", "local", tmp_path / "cache" / "locks"):  # another bench holds the local device
        proc = _cli(*args, cwd=tmp_path, cache=tmp_path / "cache")
    assert proc.returncode == 1, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "1 of 2 benches failed (on local); the others finished" in err
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    local, lab = summary["targets"]
    assert local["status"] == "failed" and local["started_at"] is None
    assert local["error"].startswith(f"local is busy: another edgeslim bench (pid {os.getpid()} since ")
    assert "drop --target local from this run" in local["error"]
    assert lab["status"] == "ok" and lab["results"][0]["runs"] == 10 and lab["device"] == sshd.url
    assert summary["comparison"]["rows"][0]["p50"] == {"local": None, "lab": lab["results"][0]["p50"]}
    assert json.loads((tmp_path / "out" / "fleet.json").read_text()) == summary
    md = (tmp_path / "out" / "fleet.md").read_text()
    assert "### local" in md and "### lab (ssh://" in md and "## Comparison" in md and "local is busy" in md
    assert sorted((r["target"], r["status"]) for r in read_jsonl(tmp_path / "r.jsonl")) == [
        ("local", "failed"), (sshd.url, "ok")]
    again = _cli(*args, cwd=tmp_path, cache=tmp_path / "cache")  # the report exists: refused before any bench
    assert again.returncode == 2 and "already holds fleet.json, fleet.md; pass --force to overwrite them" in again.stderr
    assert len(read_jsonl(tmp_path / "r.jsonl")) == 2
