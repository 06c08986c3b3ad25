"""Benchmark artefacts on this machine or on ARM boards over SSH.

``bench(artifacts, target, ...)`` uploads the self-contained :mod:`agent` (stdlib + numpy + a
runtime), runs warm-up and timed runs there and returns latencies, percentiles, memory and
machine facts. Devices: ``local``, ``ssh://user@host:port`` and names from the devices file.
``bench_fleet(artifacts, targets, ...)`` does the same on several devices at once.
"""

from __future__ import annotations

from edgeslim.device_bench.api import BenchReport, bench
from edgeslim.device_bench.fleet import DeviceRun, FleetReport, bench_fleet
from edgeslim.device_bench.results import BenchResult, read_jsonl
from edgeslim.device_bench.targets import Device, DeviceOptions, resolve_device

__all__ = ["BenchReport", "BenchResult", "Device", "DeviceOptions", "DeviceRun", "FleetReport", "bench", "bench_fleet",
           "read_jsonl", "resolve_device"]
