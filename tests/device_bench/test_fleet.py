"""A fleet of boards: ``bench_fleet`` / ``edgeslim bench ART --target A --target B`` on this machine and the real sshd.

The devices are ``local`` and devices-file entries for the test sshd reached as ``127.0.0.1`` and as
``localhost`` (two devices, each with its own work dir, so that the agents' on-device locks do not
serialise them); the unreachable one is a closed port.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

import pytest
from bench_fixtures import SSHD, SshServer, free_port, keygen, wait_banner
from bench_fixtures import _stop as stop

from edgeslim.device_bench import bench_fleet, read_jsonl
from edgeslim.device_bench.errors import DeviceBusyError, DeviceConfigError
from edgeslim.device_bench.locks import device_lock
from edgeslim.device_bench.targets import DeviceOptions


def _devices_file(sshd: SshServer, tmp_path: Path) -> Path:
    path = tmp_path / "devices.toml"
    path.write_text("".join(f'[devices.{name}]\nhost = "{host}"\nport = {sshd.port}\nuser = "{sshd.user}"\n'
                            f'workdir = "{tmp_path / (name + "-wd")}"\n'
                            for name, host in (("lab", "127.0.0.1"), ("lab2", "localhost"))))
    return path


def _options(sshd: SshServer, devices: Path) -> DeviceOptions:
    known = devices.parent / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_pub}\n[localhost]:{sshd.port} {sshd.host_pub}\n")
    return DeviceOptions(identity=str(sshd.key), known_hosts=str(known), python=sys.executable, allow_agent=False,
                         connect_timeout=10.0, devices_file=str(devices))


def test_fleet_runs_devices_concurrently_and_survives_an_unreachable_one(
        sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    """Both boards' agents wait at the same moment on an on-device lock the test holds (so they ran concurrently:
    one after the other, the first would wait for ever and fail on its lock timeout); the closed port gives rows."""
    closed = free_port()
    dead = f"ssh://{sshd.user}@127.0.0.1:{closed}"
    held: dict[str, TextIO] = {}
    for name in ("lab", "lab2"):  # the test holds each board's on-device lock (the agent's bench.lock)
        (tmp_path / f"{name}-wd").mkdir()
        held[name] = (tmp_path / f"{name}-wd" / "bench.lock").open("a+")
        fcntl.flock(held[name], fcntl.LOCK_EX)
    waiting: set[str] = set()
    guard = threading.Lock()

    def on_event(target: str, artifact: str, event: dict[str, Any]) -> None:
        with guard:
            if event["event"] == "lock_wait" and held:
                waiting.add(target)
                if waiting == {"lab", "lab2"}:  # both agents are running now: let them go
                    for handle in held.values():
                        handle.close()
                    held.clear()

    arts = [models["small"], models["big"]]
    fleet = bench_fleet(arts, ["lab", "lab2", dead], runs=20, warmup=2, results_file=tmp_path / "r.jsonl",
                        options=_options(sshd, _devices_file(sshd, tmp_path)), lock_dir=tmp_path / "locks",
                        lock_timeout=60, on_event=on_event)
    assert waiting == {"lab", "lab2"} and not held
    lab, lab2, down = fleet.runs
    assert (lab.status, lab2.status, down.status) == ("ok", "ok", "failed"), (lab.error, lab2.error)
    assert (lab.device, lab2.device) == (sshd.url, f"ssh://{sshd.user}@localhost:{sshd.port}")
    assert [r.data["runs"] for r in [*lab.results, *lab2.results]] == [20] * 4
    assert lab.results[0].data["lock_wait_s"] > 0 and lab2.results[0].data["lock_wait_s"] > 0
    assert max(lab.started_at, lab2.started_at) < min(lab.finished_at, lab2.finished_at)  # type: ignore[type-var]
    # the unreachable board: every artefact a failed row naming the host and what to do
    assert down.error and f"127.0.0.1:{closed} refused" in down.error and "start sshd on the device" in down.error
    assert [r.error for r in down.results] == [down.error, down.error]
    records = read_jsonl(tmp_path / "r.jsonl")
    assert sorted((r["target"], r["status"]) for r in records) == sorted(
        [(lab.device, "ok")] * 2 + [(lab2.device, "ok")] * 2 + [(dead, "failed")] * 2)
    assert all(r["error"] == down.error for r in records if r["status"] == "failed")
    summary = fleet.summary()
    assert [t["target"] for t in summary["targets"]] == ["lab", "lab2", dead] and summary["failures"] == 2
    for row, i in zip(summary["comparison"]["rows"], range(2), strict=True):
        assert row["p50"]["lab2"] == lab2.results[i].p50 and row["p50"][dead] is None
        assert row["ratio"]["lab2"] == pytest.approx(lab2.results[i].p50 / lab.results[i].p50)  # type: ignore[operator]
        assert row["ratio"]["lab"] == 1.0 and row["ratio"][dead] is None


def test_fleet_refuses_the_same_device_twice_before_running(sshd: SshServer, models: dict[str, Path],
                                                            tmp_path: Path) -> None:
    with pytest.raises(DeviceConfigError, match=r"targets 'lab' and '.*' are the same device \(ssh://"):
        bench_fleet(models["small"], ["lab", sshd.url], options=_options(sshd, _devices_file(sshd, tmp_path)),
                    results_file=tmp_path / "r.jsonl", lock_dir=tmp_path / "locks")
    assert not (tmp_path / "r.jsonl").exists()


def test_a_board_that_hangs_up_in_the_handshake_is_a_failed_row(models: dict[str, Path], tmp_path: Path) -> None:
    """A peer that sends an SSH banner and closes (an sshd over MaxStartups): paramiko's raw EOFError was a crash."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def hang_up() -> None:
        conn, _ = server.accept()
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        conn.recv(4096)
        conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    closed = free_port()
    options = DeviceOptions(known_hosts=str(tmp_path / "known_hosts"), allow_agent=False, connect_timeout=10.0)
    fleet = bench_fleet(models["small"], [f"ssh://root@127.0.0.1:{port}", f"ssh://root@127.0.0.1:{closed}"],
                        options=options, results_file=tmp_path / "r.jsonl", lock_dir=tmp_path / "locks")
    thread.join(timeout=30)
    server.close()
    dropped, refused = fleet.runs
    assert dropped.error == (f"ssh://root@127.0.0.1:{port} closed the connection during the SSH handshake: its sshd "
                             "dropped it (too many connections at once (MaxStartups), an overloaded board, or a "
                             "firewall); check the board's sshd log and try again")
    assert refused.error is not None and f"127.0.0.1:{closed} refused" in refused.error
    assert [r["error"] for r in read_jsonl(tmp_path / "r.jsonl")].count(dropped.error) == 1


def test_a_board_without_sftp_is_a_failed_row_saying_how_to_enable_it(models: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    """A real sshd with no SFTP subsystem (as dropbear without sftp-server): paramiko's raw error was a crash."""
    host_key, key = keygen(tmp_path / "host_key"), keygen(tmp_path / "client_key")
    (tmp_path / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    port = free_port()
    (tmp_path / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile none\nAuthorizedKeysFile "
        f"{tmp_path}/authorized_keys\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nLogLevel ERROR\nUseDNS no\n")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(tmp_path / "sshd_config")], stderr=subprocess.DEVNULL)
    try:
        wait_banner("127.0.0.1", port)
        pub = Path(f"{host_key}.pub").read_text().split()
        (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
        options = DeviceOptions(identity=str(key), known_hosts=str(tmp_path / "known_hosts"), allow_agent=False)
        target = f"ssh://{getpass.getuser()}@127.0.0.1:{port}"
        (run,) = bench_fleet(models["small"], [target], options=options, lock_dir=tmp_path / "locks").runs
    finally:
        stop(proc)
    assert run.status == "failed" and run.error is not None
    assert run.error.startswith(f"{target} accepted the login but no SFTP session could be opened (")
    assert "enable it on the board (OpenSSH: 'Subsystem sftp internal-sftp' in sshd_config" in run.error


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
