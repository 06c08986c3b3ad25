"""A fleet of boards: :func:`bench_fleet` benches the same artefacts on several devices at once.

One thread per device, each holding that device's host-side lock (:mod:`.locks`) and one
connection for all artefacts, built on the same per-artefact step as :func:`~.api.bench`. A
device that cannot be reached, is busy or fails does not stop the others: its artefacts become
``failed`` results whose ``error`` names the device and what to do, appended to the JSON-lines
results file like every other result.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeslim.device_bench.api import bench_one, check_bench_args
from edgeslim.device_bench.errors import (
    DeviceConfigError,
    DeviceDisconnectedError,
    DeviceError,
    DeviceIdleTimeoutError,
)
from edgeslim.device_bench.locks import device_lock
from edgeslim.device_bench.results import BenchResult, JsonlWriter
from edgeslim.device_bench.stats import ratio
from edgeslim.device_bench.targets import Device, DeviceOptions, resolve_device

#: ``on_event(target, artifact, event)``: every agent event of every device (progress).
FleetEventHandler = Callable[[str, str, dict[str, Any]], None]


@dataclass
class DeviceRun:
    """What happened on one device of the fleet.

    Attributes:
        target: The device as given (``--target``).
        device: Its description (``local``, ``ssh://user@host:port``).
        results: One result per artefact, in artefact order (``failed`` ones carry ``error``).
        started_at: Wall-clock time (``time.time()``) the device's lock was taken (None: never).
        finished_at: Wall-clock time its last artefact finished or failed.
        error: Why nothing (or not everything) ran: unreachable, busy, disconnected ...
    """

    target: str
    device: str
    results: list[BenchResult] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        """``ok`` (every artefact), ``partial`` or ``failed`` (none)."""
        ok = sum(r.status == "ok" for r in self.results)
        return "ok" if self.results and ok == len(self.results) else "partial" if ok else "failed"

    def summary(self) -> dict[str, Any]:
        """The device's table: per-artefact p50/p90/p99 (ms), ratios to its first artefact."""
        first = self.results[0] if self.results and self.results[0].status == "ok" else None
        return {"target": self.target, "device": self.device, "status": self.status, "error": self.error,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "seconds": None if self.started_at is None or self.finished_at is None
                else self.finished_at - self.started_at,
                "results": [r.summary(first) for r in self.results]}


@dataclass
class FleetReport:
    """All devices of one :func:`bench_fleet` call, in target order."""

    artifacts: list[str]
    runs: list[DeviceRun]
    settings: dict[str, Any]
    results_file: Path | None = None

    @property
    def failures(self) -> int:
        """How many (artefact, device) results failed."""
        return sum(r.status != "ok" for run in self.runs for r in run.results)

    def comparison(self) -> dict[str, Any]:
        """Artefact x device median latency (ms) and its ratio to the first device's (None where missing)."""
        reference = self.runs[0].target
        rows = []
        for i, artifact in enumerate(self.artifacts):
            p50 = {run.target: run.results[i].p50 if run.results[i].status == "ok" else None for run in self.runs}
            rows.append({"artifact": artifact, "p50": p50,
                         "ratio": {t: ratio(v, p50[reference]) for t, v in p50.items()}})
        return {"reference_target": reference, "targets": [run.target for run in self.runs], "rows": rows}

    def summary(self) -> dict[str, Any]:
        """The fleet's results JSON: ``targets`` (one table per device) and ``comparison``."""
        return {"artifacts": self.artifacts, "settings": self.settings,
                "targets": [run.summary() for run in self.runs], "comparison": self.comparison(),
                "failures": self.failures,
                "results_file": str(self.results_file) if self.results_file else None}


def bench_fleet(
    artifacts: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    targets: Sequence[str],
    *,
    runs: int = 50,
    warmup: int = 5,
    threads: int = 0,
    runtime: str = "auto",
    inputs: str | os.PathLike[str] | None = None,
    results_file: str | os.PathLike[str] | None = None,
    options: DeviceOptions | None = None,
    lock_timeout: float = 3600.0,
    lock_dir: str | os.PathLike[str] | None = None,
    on_event: FleetEventHandler | None = None,
    energy: str | None = None,
    energy_seconds: float = 3.0,
) -> FleetReport:
    """Benchmark every artefact on every device of ``targets``, the devices concurrently.

    Each device runs in its own thread: it takes the device's host-side lock (refused at once
    with :class:`~edgeslim.device_bench.errors.DeviceBusyError` when another bench holds it),
    connects once and benches the artefacts one after the other, as :func:`~.api.bench` does.
    A device that fails (unreachable, busy, disconnected, runtime missing ...) yields ``failed``
    results with the error; the other devices finish.

    Args:
        artifacts: One path or several; ratios in a device's table are relative to the first.
        targets: Two or more devices (``local``, ``ssh://user@host:port``, devices-file names);
            the comparison's ratios are relative to the first.
        runs: Timed runs per artefact.
        warmup: Untimed runs before timing.
        threads: Runtime threads (0: the runtime's default).
        runtime: ``"auto"`` or a runtime name to force.
        inputs: An ``.npz`` with ``x`` (and optional ``y``: top-1).
        results_file: JSON-lines file every result, failed or not, is appended to.
        options: Connection settings shared by the devices (a devices-file entry fills what is unset).
        lock_timeout: Seconds the agent waits for the on-device lock (a bench from another host).
        lock_dir: Folder of the host-side lock files (default ``$EDGESLIM_CACHE/locks``).
        on_event: Called with ``(target, artifact, event)`` for every agent event.
        energy: Energy sensor to read on each device (see :func:`~.api.bench`); None: no energy.
        energy_seconds: Seconds of idle baseline, then of inference, for ``energy``.

    Returns:
        The :class:`FleetReport`.

    Raises:
        DeviceConfigError: Bad settings, a target that does not resolve (unknown name, malformed
            URL), or two targets that are the same device; raised before anything runs.
    """
    paths = check_bench_args(artifacts, runs=runs, warmup=warmup, threads=threads, inputs=inputs, energy=energy,
                             energy_seconds=energy_seconds)
    if not targets:
        raise DeviceConfigError("bench: no targets given")
    devices = [resolve_device(t, options) for t in targets]
    seen: dict[str, str] = {}
    for spec, device in zip(targets, devices, strict=True):
        if device.description in seen:
            raise DeviceConfigError(f"bench: targets {seen[device.description]!r} and {spec!r} are the same device "
                                    f"({device.description}); a device is benched once per run (one lock each)")
        seen[device.description] = spec
    writer = JsonlWriter(results_file) if results_file else None
    settings = {"runs": runs, "warmup": warmup, "threads": threads, "runtime": runtime,
                "inputs": str(inputs) if inputs else None, "energy": energy,
                "energy_seconds": energy_seconds if energy else None, "lock_timeout": lock_timeout}
    bench_kw: dict[str, Any] = {"runs": runs, "warmup": warmup, "threads": threads, "runtime": runtime,
                                "inputs": Path(inputs) if inputs else None, "return_outputs": False,
                                "lock_timeout": lock_timeout, "energy": (energy, energy_seconds)}
    fleet = [DeviceRun(spec, device.description) for spec, device in zip(targets, devices, strict=True)]
    crashes: list[BaseException] = []

    def work(run: DeviceRun, device: Device) -> None:
        try:
            _bench_device(run, device, paths, writer, bench_kw, lock_dir, on_event)
        except BaseException as exc:  # not a device failure: a bug; re-raised once every device has finished
            crashes.append(exc)

    workers = [threading.Thread(target=work, args=(run, device), name=f"bench {run.target}", daemon=True)
               for run, device in zip(fleet, devices, strict=True)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if crashes:
        raise crashes[0]
    return FleetReport([str(p) for p in paths], fleet, settings, Path(results_file) if results_file else None)


def _bench_device(run: DeviceRun, device: Device, paths: list[Path], writer: JsonlWriter | None,
                  bench_kw: dict[str, Any], lock_dir: str | os.PathLike[str] | None,
                  on_event: FleetEventHandler | None) -> None:
    """Bench every artefact on one device, filling ``run``; device failures become failed results."""
    handler = None if on_event is None else (lambda artifact, event: on_event(run.target, artifact, event))
    try:
        with device_lock(run.device, run.target, lock_dir):
            run.started_at = time.time()
            conn = device.connect()
            try:
                for path in paths:
                    try:
                        run.results.append(bench_one(conn, path, writer, on_event=handler, done=len(run.results),
                                                     **bench_kw))
                    except DeviceError as exc:  # bench_one wrote its record
                        run.results.append(BenchResult(str(path), run.device, "failed", {}, str(exc)))
                        if isinstance(exc, (DeviceDisconnectedError, DeviceIdleTimeoutError)):
                            run.error = str(exc)
                            break
            finally:
                conn.close()
    except DeviceError as exc:  # busy, unreachable, host key, authentication ...
        run.error = str(exc)
    finally:
        run.finished_at = time.time()
    error = f"not run on {run.target}: {run.error}" if run.results else str(run.error)
    for path in paths[len(run.results):]:
        failed = BenchResult(str(path), run.device, "failed", {}, error)
        run.results.append(failed)
        if writer is not None:
            writer.append(failed.record())
