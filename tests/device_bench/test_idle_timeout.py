"""The idle timeout: a command that prints nothing is abandoned with a clear error; finished results stay.

Against the real sshd of the ``sshd`` fixture (and the ``local`` device); the "wedged" command is a
real ``sleep`` on the far side.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench_fixtures import SshServer

from edgeslim.device_bench import DeviceOptions, bench, read_jsonl, resolve_device
from edgeslim.device_bench.errors import DeviceIdleTimeoutError


@pytest.fixture
def stuck_python(tmp_path: Path) -> Iterator[Path]:
    """A "python" for the device that hangs silently (after one line) when asked to bench ``big.onnx``."""
    script = tmp_path / "python-stuck-on-big"
    script.write_text(f'#!/bin/sh\ncase "$*" in *big.onnx*) echo "loading"; '
                      f'EDGESLIM_TEST_TAG={tmp_path} exec sleep 30;; esac\nexec {sys.executable} "$@"\n')
    script.chmod(0o755)
    yield script
    _kill_sleepers(str(tmp_path))


def _kill_sleepers(tag: str) -> None:
    """Kill, by PID, the ``sleep`` processes this test left behind (``EDGESLIM_TEST_TAG=tag`` in their environment)."""
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"sleep\0") and \
                    f"EDGESLIM_TEST_TAG={tag}\0".encode() in (proc / "environ").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)


def test_silent_command_raises_idle_timeout(sshd: SshServer, tmp_path: Path) -> None:
    conn = resolve_device(sshd.url, sshd.options(tmp_path / "remote", idle_timeout=1.5)).connect()
    lines: list[str] = []
    try:
        t0 = time.monotonic()
        with pytest.raises(DeviceIdleTimeoutError) as info:
            conn.run(["sh", "-c", "echo started; sleep 1; echo still here; exec sleep 20"], lines.append,
                     env={"EDGESLIM_TEST_TAG": str(tmp_path)})
        elapsed = time.monotonic() - t0
        assert conn.run(["echo", "alive"], lines.append) == 0  # the session itself is still usable
    finally:
        conn.close()
        _kill_sleepers(str(tmp_path))
    assert 2.5 <= elapsed < 8  # 1 s of output, then 1.5 s of silence
    msg = str(info.value)
    assert f"127.0.0.1:{sshd.port}" in msg and "exec sleep 20" in msg and "1.5 s" in msg and "--idle-timeout" in msg
    assert lines == ["started", "still here", "alive"]


def test_bench_idle_timeout_keeps_finished_results(sshd: SshServer, models: dict[str, Path], tmp_path: Path,
                                                   stuck_python: Path) -> None:
    results = tmp_path / "r.jsonl"
    t0 = time.monotonic()
    with pytest.raises(DeviceIdleTimeoutError) as info:
        bench([models["small"], models["big"]], sshd.url, runs=3, warmup=0, results_file=results,
              options=sshd.options(tmp_path / "remote", python=str(stuck_python), idle_timeout=2))
    assert time.monotonic() - t0 < 30  # without the idle timeout it would wait for the 30 s sleep
    first, second = read_jsonl(results)
    assert first["status"] == "ok" and first["artifact"].endswith("small.onnx") and len(first["latencies_ms"]) == 3
    assert second["status"] == "failed" and second["artifact"].endswith("big.onnx") and second["runs_finished"] == 0
    msg = str(info.value)
    assert f"127.0.0.1:{sshd.port}" in msg and "big.onnx" in msg and "2 s" in msg and f"kept in {results}" in msg


def test_waiting_for_the_device_lock_is_not_idle(sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    events: list[str] = []
    with (remote / "bench.lock").open("a+") as held:  # another bench holds the device's lock
        fcntl.flock(held, fcntl.LOCK_EX)
        out: list[object] = []

        def run() -> None:
            try:
                out.append(bench(models["small"], sshd.url, runs=2, options=sshd.options(remote, idle_timeout=1.0),
                                 on_event=lambda _a, e: events.append(str(e["event"]))).results[0].data)
            except Exception as exc:  # reported by the assertion below
                out.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 60
        while "lock_wait" not in events and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2.5)  # silent for 2.5 s while waiting: more than the 1 s idle timeout
    worker.join(timeout=60)
    assert out and isinstance(out[0], dict), out
    assert out[0]["lock_wait_s"] >= 2.5


def test_cli_idle_timeout_flag_and_devices_file(sshd: SshServer, models: dict[str, Path], tmp_path: Path,
                                                stuck_python: Path) -> None:
    devices = tmp_path / "devices.toml"
    devices.write_text(f'[devices.box]\nhost = "127.0.0.1"\nuser = "{sshd.user}"\nport = {sshd.port}\n'
                       f'identity = "{sshd.key}"\nknown_hosts = "{sshd.known_hosts}"\npython = "{stuck_python}"\n'
                       f'workdir = "{tmp_path / "remote"}"\nidle_timeout = 1.5\n')
    base = [sys.executable, "-m", "edgeslim.cli", "bench", str(models["big"]), "--target", "box", "--devices",
            str(devices), "--runs", "2"]
    for extra, shown in (([], "1.5 s"), (["--idle-timeout", "2.5"], "2.5 s")):  # the file's value, then the flag's
        t0 = time.monotonic()
        proc = subprocess.run([*base, *extra], capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False)
        err = " ".join(proc.stderr.split())
        assert proc.returncode == 2 and "DeviceIdleTimeoutError" in err and shown in err, err
        assert time.monotonic() - t0 < 25
    records = [json.loads(line) for line in (tmp_path / "edgeslim-bench.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["failed", "failed"]


def test_local_idle_timeout(models: dict[str, Path], tmp_path: Path, stuck_python: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(DeviceIdleTimeoutError, match=r"local: .*big\.onnx.*printed nothing for 1 s"):
        bench(models["big"], "local", runs=2, options=DeviceOptions(workdir=str(tmp_path / "wd"),
                                                                    python=str(stuck_python), idle_timeout=1))
    assert time.monotonic() - t0 < 20
