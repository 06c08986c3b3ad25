"""The reliability list of issue 5, each against the real sshd started by the ``sshd`` fixture."""

from __future__ import annotations

import fcntl
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from bench_fixtures import SshServer, free_port, keygen

from edgeslim.device_bench import bench, read_jsonl
from edgeslim.device_bench.errors import (
    DeviceAuthError,
    DeviceDisconnectedError,
    DeviceDiskFullError,
    DeviceTimeoutError,
    DeviceUnreachableError,
    RuntimeMissingError,
)
from edgeslim.device_bench.targets import resolve_device


def test_bench_over_ssh_reports_stats_and_top1(sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    report = bench([models["small"], models["big"]], sshd.url, runs=10, warmup=2, threads=1, inputs=models["inputs"],
                   results_file=tmp_path / "r.jsonl", options=sshd.options(tmp_path / "remote"))
    small, big = report.results
    assert small.data["runtime"] == "onnxruntime" and small.data["runtime_version"]
    assert len(small.data["latencies_ms"]) == 10
    assert small.data["p50"] <= small.data["p90"] <= small.data["p99"] <= small.data["max"]
    assert small.data["top1"] == pytest.approx(0.75) and small.data["top1_n"] == 16
    assert small.data["machine"] and small.data["cpu_cores"] >= 1 and small.data["peak_rss_mb"] > 10
    summary = report.summary()
    assert summary["results"][0]["ratio_p50"] == 1.0
    recs = read_jsonl(tmp_path / "r.jsonl")
    assert [r["status"] for r in recs] == ["ok", "ok"] and [len(r["latencies_ms"]) for r in recs] == [10, 10]
    # the big model's ratio, recomputed from the raw per-run latencies the device streamed into the results file
    medians = [float(np.median(r["latencies_ms"])) for r in recs]
    assert [Path(r["artifact"]).name for r in recs] == ["small.onnx", "big.onnx"]
    assert (small.data["p50"], big.data["p50"]) == pytest.approx(medians, rel=1e-6)
    assert summary["results"][1]["ratio_p50"] == pytest.approx(medians[1] / medians[0], rel=1e-6)
    assert list((tmp_path / "remote").glob("run-*")) == []  # uploads cleaned up


def test_connect_timeout_on_silent_listener(sshd: SshServer, models: dict[str, Path]) -> None:
    with socket.socket() as silent:  # accepts TCP (kernel backlog) but never speaks SSH
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(DeviceTimeoutError, match=r"1\.5 s"):
            bench(models["small"], f"ssh://root@127.0.0.1:{port}", options=sshd.options(connect_timeout=1.5))
        assert time.monotonic() - t0 < 15


def test_connect_timeout_on_tcp_blackhole(sshd: SshServer, models: dict[str, Path]) -> None:
    with socket.socket() as server:  # accept queue full: the kernel drops further SYNs (a black hole)
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        for c in fillers:
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
        time.sleep(0.3)
        t0 = time.monotonic()
        try:
            with pytest.raises(DeviceTimeoutError, match=r"timed out after 1 s"):
                bench(models["small"], f"ssh://root@127.0.0.1:{port}", options=sshd.options(connect_timeout=1.0))
        finally:
            for c in fillers:
                c.close()
        assert time.monotonic() - t0 < 10


def test_connection_refused(sshd: SshServer, models: dict[str, Path]) -> None:
    port = free_port()
    with pytest.raises(DeviceUnreachableError, match=f"refused.*port {port}"):
        bench(models["small"], f"ssh://root@127.0.0.1:{port}", options=sshd.options())


def test_auth_failure_says_how_to_install_key(sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    other = keygen(tmp_path / "other_key")
    with pytest.raises(DeviceAuthError, match="ssh-copy-id") as info:
        bench(models["small"], sshd.url, options=sshd.options(identity=str(other)))
    assert str(other) in str(info.value)


def test_disconnect_mid_run_keeps_finished_results(sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    killed: list[int] = []

    def on_event(artifact: str, event: dict[str, object]) -> None:
        if artifact.endswith("big.onnx") and event.get("event") == "run" and event.get("i") == 5 and not killed:
            killed.extend(sshd.kill_sessions())

    with pytest.raises(DeviceDisconnectedError, match="kept in") as info:
        bench([models["small"], models["big"]], sshd.url, runs=20000, warmup=0, results_file=results,
              options=sshd.options(tmp_path / "remote"), on_event=on_event)
    assert killed
    first, second = read_jsonl(results)
    assert first["status"] == "ok" and first["p50"] > 0 and len(first["latencies_ms"]) == 20000
    assert second["status"] == "failed" and 6 <= second["runs_finished"] < 20000
    assert "big.onnx" in str(info.value)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_remote_disk_full(sshd: SshServer, models: dict[str, Path], tiny_disk: Path, tmp_path: Path) -> None:
    assert models["big"].stat().st_size > 256 * 1024
    results = tmp_path / "r.jsonl"
    with pytest.raises(DeviceDiskFullError, match=f"disk full.*{tiny_disk}"):
        bench(models["big"], sshd.url, options=sshd.options(tiny_disk), results_file=results)
    assert read_jsonl(results)[0]["status"] == "failed"
    # The upload itself failing (no pre-check) is reported as disk full too.
    (tiny_disk / "filler").write_bytes(b"\0" * (200 * 1024))
    conn = resolve_device(sshd.url, sshd.options(tiny_disk)).connect()
    try:
        with pytest.raises(DeviceDiskFullError, match="disk full"):
            conn.stage(models["big"], "x/big.onnx")
    finally:
        conn.close()


def test_runtime_missing_says_how_to_install(sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    tfl = tmp_path / "m.tflite"
    tfl.write_bytes(b"not needed: the runtime check comes first")
    with pytest.raises(RuntimeMissingError, match="pip install --user tflite-runtime"):
        bench(tfl, sshd.url, runtime="tflite-runtime", options=sshd.options(tmp_path / "remote"))
    system_python = shutil.which("python3", path="/usr/bin")
    if system_python and subprocess.run([system_python, "-c", "import numpy"], check=False, capture_output=True).returncode:
        with pytest.raises(RuntimeMissingError, match="pip install --user numpy"):
            bench(models["small"], sshd.url, options=sshd.options(tmp_path / "remote", python=system_python))
    with pytest.raises(RuntimeMissingError, match="was not found on the device"):
        bench(models["small"], sshd.url, options=sshd.options(tmp_path / "remote", python="/nonexistent/python3"))


def test_shell_metacharacters_are_quoted(sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    name = """my model $(touch PWNED1) `touch PWNED2`; touch PWNED3 & 'q' "d" |x.onnx"""
    src = tmp_path / "in dir; $(touch PWNED4)"
    src.mkdir()
    weird = src / name
    shutil.copy(models["small"], weird)
    report = bench(weird, sshd.url, runs=3, options=sshd.options(remote / "work dir $(touch PWNED5)"))
    assert report.results[0].status == "ok" and report.results[0].artifact == str(weird)
    pwned = [*tmp_path.rglob("PWNED*"), *Path.home().glob("PWNED*"), *Path.cwd().glob("PWNED*")]
    assert pwned == []


def test_two_benches_at_once_are_serialised(sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    out: dict[int, dict[str, float]] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            out[i] = bench(models["big"], sshd.url, runs=1500, warmup=0,
                           options=sshd.options(tmp_path / "remote")).results[0].data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    a, b = sorted(out.values(), key=lambda d: d["locked_at"])
    assert a["released_at"] <= b["locked_at"]  # no overlap of the two timed sections


def test_bench_waits_for_the_device_lock(sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    events: list[str] = []
    with (remote / "bench.lock").open("a+") as held:  # another bench holds the device's lock
        fcntl.flock(held, fcntl.LOCK_EX)
        result: list[dict[str, float]] = []
        worker = threading.Thread(target=lambda: result.append(bench(
            models["small"], sshd.url, runs=3, options=sshd.options(remote),
            on_event=lambda _a, e: events.append(str(e["event"]))).results[0].data))
        worker.start()
        deadline = time.monotonic() + 60
        while "lock_wait" not in events and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "lock_wait" in events and "locked" not in events
        time.sleep(1.0)
        released = time.time()
    worker.join(timeout=60)
    assert result and result[0]["lock_wait_s"] >= 1.0 and result[0]["locked_at"] >= released - 0.05
