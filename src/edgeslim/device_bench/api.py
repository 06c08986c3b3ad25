"""One call per job: :func:`bench` benchmarks artefacts on a target and returns a :class:`BenchReport`."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeslim.device_bench.agent_build import agent_file
from edgeslim.device_bench.errors import (
    AgentError,
    DeviceConfigError,
    DeviceDisconnectedError,
    DeviceDiskFullError,
    DeviceError,
    DeviceIdleTimeoutError,
    RuntimeMissingError,
)
from edgeslim.device_bench.results import BenchResult, JsonlWriter
from edgeslim.device_bench.targets import Connection, DeviceOptions, resolve_device

EVENT_PREFIX = "@@edgeslim "
EXIT_COMMAND_NOT_FOUND = 127
#: ``on_event(artifact, event)`` sees every agent event (``loaded``, ``run``, ``result`` ...).
EventHandler = Callable[[str, dict[str, Any]], None]


@dataclass
class BenchReport:
    """All results of one :func:`bench` call, in artefact order."""

    target: str
    results: list[BenchResult]
    results_file: Path | None = None

    def summary(self) -> dict[str, Any]:
        """The ``--json`` summary: per-artefact p50/p90/p99 (ms), ratios to the first artefact."""
        first = self.results[0] if self.results else None
        out: dict[str, Any] = {"target": self.target, "results": [r.summary(first) for r in self.results],
                               "results_file": str(self.results_file) if self.results_file else None}
        if len(self.results) == 1:
            out["p50"] = self.results[0].p50
        return out


@dataclass
class _Collector:
    """Parses agent output lines into events."""

    artifact: str
    on_event: EventHandler | None
    lock_timeout: float = 0.0
    latencies: list[float] = field(default_factory=list)
    lock_wait_since: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    tail: list[str] = field(default_factory=list)

    def __call__(self, line: str) -> None:
        if not line.startswith(EVENT_PREFIX):
            self.tail = [*self.tail[-29:], line]
            return
        event = json.loads(line[len(EVENT_PREFIX):])
        kind = event.get("event")
        self.lock_wait_since = time.monotonic() if kind == "lock_wait" else None
        if kind == "run":
            self.latencies.append(float(event["ms"]))
        elif kind == "result":
            self.result = event
        elif kind == "error":
            self.error = event
        if self.on_event is not None:
            self.on_event(self.artifact, event)

    def waiting(self) -> bool:
        """True while the agent waits for the device lock (silent, bounded by its own lock timeout)."""
        return self.lock_wait_since is not None and time.monotonic() - self.lock_wait_since < self.lock_timeout


def bench(
    artifacts: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    target: str = "local",
    *,
    runs: int = 50,
    warmup: int = 5,
    threads: int = 0,
    runtime: str = "auto",
    inputs: str | os.PathLike[str] | None = None,
    results_file: str | os.PathLike[str] | None = None,
    options: DeviceOptions | None = None,
    return_outputs: bool = False,
    lock_timeout: float = 3600.0,
    on_event: EventHandler | None = None,
    energy: str | None = None,
    energy_seconds: float = 3.0,
) -> BenchReport:
    """Benchmark each artefact (``.onnx``, ``.tflite``, ``.engine``) on ``target``, one after the other.

    Args:
        artifacts: One path or several; ratios in the summary are relative to the first.
        target: ``"local"``, ``"ssh://user@host:port"`` or a name from the devices file.
        runs: Timed runs per artefact.
        warmup: Untimed runs before timing.
        threads: Runtime threads (0: the runtime's default).
        runtime: ``"auto"`` (by suffix, whichever the device has) or a runtime name to force.
        inputs: An ``.npz`` with ``x`` (inputs; the first batch is timed) and optionally ``y``
            (labels: the agent then reports ``top1``).
        results_file: JSON-lines file each result (or failure) is appended to as it finishes.
        options: SSH identity, known_hosts, remote python, workdir, connect and idle timeouts
            (a command that prints nothing for ``idle_timeout`` seconds, default 300, is abandoned
            with :class:`~edgeslim.device_bench.errors.DeviceIdleTimeoutError`; waiting for the
            device lock does not count).
        return_outputs: Include the model outputs for the timed input in each result.
        lock_timeout: Seconds to wait for another bench holding the device's lock.
        on_event: Called with every agent event (progress).
        energy: Also measure energy per inference on the device with this sensor (``"auto"``: the
            device's own, see :mod:`edgeslim.device_bench.energy`; or ``rapl``, ``hwmon``,
            ``jetson-ina3221``, ``pmic``, ``nvml``, ``nvidia-smi``); None: no energy.
        energy_seconds: Seconds of idle baseline, then at least as long of inference, for ``energy``.

    Returns:
        The report; each result's ``data`` holds latencies, p50/p90/p99, mean, std (ms),
        load time, peak RSS, runtime and version, ``machine`` (uname -m), CPU facts; with
        ``energy``: ``joules_per_inference`` and ``avg_watts`` (above the idle baseline),
        ``energy_sensor``, or both None and ``energy_unavailable_reason`` ("not available: ...").

    Raises:
        DeviceError: Connecting, uploading or running failed (subclasses say which, e.g.
            ``DeviceDisconnectedError``, ``DeviceIdleTimeoutError``); results finished before the
            failure are already in ``results_file``.
    """
    paths = check_bench_args(artifacts, runs=runs, warmup=warmup, threads=threads, inputs=inputs, energy=energy,
                             energy_seconds=energy_seconds)
    writer = JsonlWriter(results_file) if results_file else None
    device = resolve_device(target, options)
    conn = device.connect()
    results: list[BenchResult] = []
    try:
        for path in paths:
            result = bench_one(conn, path, writer, runs=runs, warmup=warmup, threads=threads, runtime=runtime,
                                inputs=Path(inputs) if inputs else None, return_outputs=return_outputs,
                                lock_timeout=lock_timeout, on_event=on_event, done=len(results),
                                energy=(energy, energy_seconds))
            results.append(result)
    finally:
        conn.close()
    return BenchReport(device.description, results, Path(results_file) if results_file else None)


def check_bench_args(artifacts: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, runs: int,
                     warmup: int, threads: int, inputs: str | os.PathLike[str] | None, energy: str | None,
                     energy_seconds: float) -> list[Path]:
    """The artefact paths, after checking the settings :func:`bench` takes (before any connection).

    Raises:
        DeviceConfigError: No artefacts, a bad count, or a file that does not exist.
    """
    paths = [Path(artifacts)] if isinstance(artifacts, (str, os.PathLike)) else [Path(a) for a in artifacts]
    if not paths:
        raise DeviceConfigError("bench: no artefacts given")
    if runs < 1 or warmup < 0 or threads < 0:
        raise DeviceConfigError(f"bench: runs must be >= 1, warmup and threads >= 0 (got {runs}, {warmup}, {threads})")
    if energy is not None and not energy_seconds > 0:
        raise DeviceConfigError(f"bench: energy_seconds must be > 0 (got {energy_seconds})")
    for p in [*paths, *([Path(inputs)] if inputs else [])]:
        if not p.is_file():
            raise DeviceConfigError(f"bench: {p} is not a file")
    return paths


def bench_one(conn: Connection, path: Path, writer: JsonlWriter | None, *, runs: int, warmup: int, threads: int,
               runtime: str, inputs: Path | None, return_outputs: bool, lock_timeout: float,
               on_event: EventHandler | None, done: int, energy: tuple[str | None, float] = (None, 0.0)) -> BenchResult:
    """Bench ``path`` on the open connection ``conn``; the result (or the failure) is appended to ``writer``.

    Raises:
        DeviceError: As :func:`bench`; the failure's record is already written.
    """
    collector = _Collector(str(path), on_event, lock_timeout)
    try:
        run_dir = f"run-{uuid.uuid4().hex[:12]}"
        files = [(agent_file(), f"{run_dir}/agent.py"), (path, f"{run_dir}/{path.name}")]
        if inputs is not None:
            files.append((inputs, f"{run_dir}/inputs.npz"))
        need = sum(p.stat().st_size for p, _ in files) + 64 * 1024
        free = conn.free_bytes()
        if free < need:
            raise DeviceDiskFullError(f"disk full on {conn.description}: {conn.workdir()} has {free} bytes free, "
                                      f"the upload needs {need}. Free space there or pick another --workdir")
        run_path = conn.make_dir(run_dir)
        staged = [conn.stage(p, name) for p, name in files]
        workdir = conn.workdir()
        argv = [conn.python, "-u", staged[0], "bench", "--model", staged[1], "--runtime", runtime, "--runs", str(runs),
                "--warmup", str(warmup), "--threads", str(threads), "--lock", f"{workdir}/bench.lock",
                "--lock-timeout", str(lock_timeout), "--site", f"{workdir}/site"]
        if inputs is not None:
            argv += ["--inputs", staged[2]]
        if return_outputs:
            argv.append("--return-outputs")
        if energy[0] is not None:
            argv += ["--energy", energy[0], "--energy-seconds", str(energy[1])]
        rc = conn.run(argv, collector, waiting=collector.waiting)  # on a lost connection the uploads stay
        conn.remove(run_path)
        result = _interpret(conn, path, rc, collector)
    except DeviceError as exc:
        if writer is not None:
            data = {"latencies_ms": collector.latencies, "runs_finished": len(collector.latencies)}
            writer.append(BenchResult(str(path), conn.description, "failed", data, str(exc)).record())
        if isinstance(exc, (DeviceDisconnectedError, DeviceIdleTimeoutError)):
            where = f" ({done} finished artefact(s) kept in {writer.path})" if writer else ""
            raise type(exc)(f"{exc}; {len(collector.latencies)} of {runs} timed runs of {path.name} "
                            f"had finished{where}") from exc
        raise
    if writer is not None:
        writer.append(result.record())
    return result


def _interpret(conn: Connection, path: Path, rc: int, collector: _Collector) -> BenchResult:
    if collector.result is not None and rc == 0:
        data = {k: v for k, v in collector.result.items() if k != "event"}
        return BenchResult(str(path), conn.description, "ok", data)
    tail = "\n".join(collector.tail[-10:])
    err = collector.error
    if err is not None and err.get("kind") == "runtime_missing":
        raise RuntimeMissingError(f"{conn.description}: {err['message']}; {err['hint']}")
    if err is not None:
        raise AgentError(f"{conn.description}: bench of {path.name} failed: {err['message']}\n{tail}".rstrip())
    if rc == EXIT_COMMAND_NOT_FOUND:
        raise RuntimeMissingError(
            f"{conn.description}: {conn.python!r} was not found on the device ({tail.strip()}); install Python 3 "
            "and numpy there (Debian/Raspberry Pi OS: sudo apt install python3 python3-numpy) or pass --python")
    raise AgentError(f"{conn.description}: the agent exited with status {rc} and no result for {path.name}:\n{tail}")
