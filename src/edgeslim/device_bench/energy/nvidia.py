"""NVIDIA GPUs: NVML's energy counter (``pynvml``) or ``nvidia-smi``'s power reading.

``nvml``: ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the driver was loaded;
Volta and later), when the ``pynvml`` module (PyPI ``nvidia-ml-py``) is importable on the device.
``nvidia-smi``: ``nvidia-smi --query-gpu=power.draw --format=csv,noheader,nounits`` prints one line
per GPU in watts (``[N/A]`` where the board cannot measure it), sampled and integrated. Both
count every GPU of the machine (the idle baseline removes the ones not working).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from edgeslim.device_bench.energy.base import Sensor, SensorUnavailable, host_name, register_sensor, run_command

SMI_COMMAND = ["nvidia-smi", "--query-gpu=power.draw", "--format=csv,noheader,nounits"]


def parse_power_draw(text: str) -> list[float | None]:
    """Watts per GPU line of the ``power.draw`` query (None for ``[N/A]`` / ``[Not Supported]``)."""
    out: list[float | None] = []
    for line in text.strip().splitlines():
        try:
            out.append(float(line.strip()))
        except ValueError:
            out.append(None)
    return out


@register_sensor("nvml")
class NvmlSensor(Sensor):
    """NVML total energy counters of every GPU (``pynvml``)."""

    source = "NVML"
    priority = 50

    def __init__(self, nvml: Any, handles: list[Any], names: list[str]) -> None:
        super().__init__()
        self.kind = "energy"
        self.nvml = nvml
        self.handles = handles
        self.channels = [f"gpu{i} {n}" for i, n in enumerate(names)]
        self.totals = list(self.channels)
        self.interval_s = 0.02
        self.description = f"nvml total energy ({', '.join(self.channels)})"

    @classmethod
    def probe(cls, root: str = "/", runner: Callable[[list[str]], str] | None = None) -> Sensor:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError as exc:
            raise SensorUnavailable("nvml: pynvml not importable (pip install nvidia-ml-py)") from exc
        try:
            nvml.nvmlInit()
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            names = [nvml.nvmlDeviceGetName(h) for h in handles]
            sensor = cls(nvml, handles, [n.decode() if isinstance(n, bytes) else str(n) for n in names])
            if not handles:
                raise SensorUnavailable("nvml: no GPU", present=True)
            sensor.read()
        except SensorUnavailable:
            raise
        except Exception as exc:  # NVMLError: no driver, or a GPU older than Volta
            raise SensorUnavailable(f"nvml: {type(exc).__name__}: {exc}", present=True) from exc
        return sensor

    def read(self) -> dict[str, float]:
        get = self.nvml.nvmlDeviceGetTotalEnergyConsumption
        return {c: get(self.handles[i]) / 1e3 for i, c in enumerate(self.channels)}


@register_sensor("nvidia-smi")
class NvidiaSmiSensor(Sensor):
    """``nvidia-smi`` ``power.draw`` of every GPU that reports one (watts, sampled)."""

    source = "nvidia-smi"
    priority = 60
    interval_s = 0.05

    def __init__(self, runner: Callable[[list[str]], str], gpus: list[int]) -> None:
        super().__init__()
        self.kind = "power"
        self.runner = runner
        self.gpus = gpus
        self.channels = [f"gpu{i}" for i in gpus]
        self.totals = list(self.channels)
        self.description = f"nvidia-smi power.draw ({', '.join(self.channels)})"

    @classmethod
    def probe(cls, root: str = "/", runner: Callable[[list[str]], str] | None = None) -> Sensor:
        run = runner or run_command
        try:
            watts = parse_power_draw(run(SMI_COMMAND))
        except FileNotFoundError as exc:
            raise SensorUnavailable("nvidia-smi: not found") from exc
        gpus = [i for i, w in enumerate(watts) if w is not None]
        if not gpus:
            raise SensorUnavailable(
                f"nvidia-smi: no GPU of {host_name()} reports power.draw ({len(watts)} GPU(s), all [N/A])",
                present=bool(watts),
            )
        return cls(run, gpus)

    def read(self) -> dict[str, float]:
        watts = parse_power_draw(self.runner(SMI_COMMAND))
        return {f"gpu{i}": float(watts[i] or 0.0) if i < len(watts) else 0.0 for i in self.gpus}
