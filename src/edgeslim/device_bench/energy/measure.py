"""Energy per inference: find the device's sensor, measure an idle baseline, then the inference loop.

:func:`detect_sensor` probes the registered readers in order of preference and returns the first
that can be read, or None and the reason ("not available: ..."). :func:`measure_energy` samples
the sensor in a background thread while the device idles (``idle_s``) and then while it runs
inferences (at least ``active_s`` seconds and ``min_runs`` runs); :func:`integrate` turns the
samples into joules (counter deltas with wrap-around, or power integrated by the trapezoidal
rule). Reported: ``joules_per_inference`` = (active energy - idle watts x active seconds) / runs,
``avg_watts`` = active watts - idle watts (the power the inferences add), with ``active_watts``,
``idle_watts`` and per-channel active watts as the breakdown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from edgeslim.device_bench.energy.base import SENSORS, Sensor, SensorUnavailable, host_name, sensor_order


def detect_sensor(
    root: str = "/", runner: Callable[[list[str]], str] | None = None, prefer: Sequence[str] = (), only: bool = False
) -> tuple[Sensor | None, str | None]:
    """The first readable sensor (``prefer`` first, then by preference), or None and why.

    Args:
        root: Where the device's file system starts.
        runner: ``runner(argv) -> stdout`` for ``vcgencmd`` / ``nvidia-smi`` (default: subprocess).
        prefer: Sensor names to try first (e.g. ``("nvml", "nvidia-smi")`` for a GPU runtime); a
            name that is not registered is refused with ``ValueError``.
        only: Try the ``prefer`` sensors only (a sensor the user named).

    Returns:
        ``(sensor, None)``, or ``(None, "not available: ...")`` naming what is missing, or what is
        there but unreadable and how to fix it.
    """
    unknown = [n for n in prefer if n not in SENSORS]
    if unknown:
        raise ValueError(f"unknown energy sensor {unknown[0]!r}; known: {', '.join(SENSORS)}")
    order = list(prefer) + ([] if only else [n for n in sensor_order() if n not in prefer])
    absent: list[str] = []
    blocked: list[str] = []
    for name in order:
        try:
            return SENSORS[name].probe(root, runner), None
        except SensorUnavailable as exc:
            (blocked if exc.present else absent).append(exc.reason)
    if blocked:
        return None, "not available: " + "; ".join(blocked)
    sources = "/".join(dict.fromkeys(SENSORS[n].source for n in order))
    return None, f"not available: no {sources} on {host_name()} ({'; '.join(absent)})"


def integrate(sensor: Sensor, samples: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Joules per channel over ``samples`` (``(time s, reading)`` in time order).

    Energy counters: the sum of successive differences, a drop counting as a wrap-around at the
    channel's ``wrap_j`` (a counter without a known range that drops is taken as reset: that step
    counts 0). Power: the trapezoidal rule.
    """
    out = dict.fromkeys(sensor.channels, 0.0)
    for i in range(1, len(samples)):  # (no itertools.pairwise: a board may run Python 3.8)
        (t0, a), (t1, b) = samples[i - 1], samples[i]
        for channel in sensor.channels:
            if sensor.kind == "energy":
                step = b[channel] - a[channel]
                if step < 0:
                    span = sensor.wrap_j.get(channel)
                    step = step + span if span else 0.0
                out[channel] += step
            else:
                out[channel] += (t1 - t0) * (a[channel] + b[channel]) / 2.0
    return out


class _Sampler:
    """Reads ``sensor`` every ``interval_s`` in a thread between :meth:`start` and :meth:`stop`."""

    def __init__(self, sensor: Sensor, clock: Callable[[], float]) -> None:
        self.sensor = sensor
        self.clock = clock
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _take(self) -> None:
        reading = self.sensor.read()
        self.samples.append((self.clock(), reading))

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.sensor.interval_s):
                self._take()
        except BaseException as exc:  # re-raised by stop() in the measuring thread
            self.error = exc

    def start(self) -> None:
        self._take()
        self._thread.start()

    def stop(self) -> tuple[float, dict[str, float]]:
        """Stop sampling; ``(seconds, joules per channel)`` of the window."""
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise self.error
        self._take()
        return self.samples[-1][0] - self.samples[0][0], integrate(self.sensor, self.samples)


def measure_energy(
    sensor: Sensor,
    infer: Callable[[], Any],
    *,
    idle_s: float = 2.0,
    active_s: float = 3.0,
    min_runs: int = 10,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Any] = time.sleep,
    on_phase: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Measure the idle baseline, then ``infer()`` in a loop, and report energy per inference.

    Args:
        sensor: From :func:`detect_sensor`.
        infer: One inference (the same call the latency runs time).
        idle_s: Seconds of idle baseline, measured first.
        active_s: Minimum seconds of inference.
        min_runs: Minimum inferences.
        clock: Seconds (monotonic); injectable for tests.
        sleep: Used to idle; injectable for tests.
        on_phase: Called with ``"active"`` when the inference loop starts (progress).

    Returns:
        ``joules_per_inference``, ``avg_watts`` (above idle), ``active_watts``, ``idle_watts``,
        ``energy_sensor``, ``energy_kind``, ``energy_runs``, ``energy_active_s``, ``energy_idle_s``,
        ``energy_samples`` and ``energy_channels_w`` (per-channel active watts); ``energy_note`` when
        the inferences did not measure above the idle baseline.

    Raises:
        SensorUnavailable: The sensor stopped answering during the measurement.
    """
    idle = _Sampler(sensor, clock)
    idle.start()
    sleep(idle_s)
    idle_t, idle_j = idle.stop()
    if on_phase is not None:
        on_phase("active")
    active = _Sampler(sensor, clock)
    runs = 0
    active.start()
    start = clock()
    while runs < min_runs or clock() - start < active_s:
        infer()
        runs += 1
    active_t, active_j = active.stop()
    if idle_t <= 0 or active_t <= 0:
        raise SensorUnavailable("the clock did not advance during the energy measurement", present=True)
    idle_w = sum(idle_j[c] for c in sensor.totals) / idle_t
    active_w = sum(active_j[c] for c in sensor.totals) / active_t
    net_j = sum(active_j[c] for c in sensor.totals) - idle_w * active_t
    out: dict[str, Any] = {
        "joules_per_inference": net_j / runs,
        "avg_watts": active_w - idle_w,
        "active_watts": active_w,
        "idle_watts": idle_w,
        "energy_sensor": sensor.description,
        "energy_kind": sensor.kind,
        "energy_runs": runs,
        "energy_active_s": active_t,
        "energy_idle_s": idle_t,
        "energy_samples": len(idle.samples) + len(active.samples),
        "energy_channels_w": {c: active_j[c] / active_t for c in sensor.channels},
    }
    if net_j <= 0:
        out["energy_note"] = (
            f"the inferences measured no power above the idle baseline ({active_w:.3f} W vs "
            f"{idle_w:.3f} W idle): below this sensor's resolution; time more runs"
        )
    return out
