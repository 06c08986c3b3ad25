"""Intel/AMD RAPL through the powercap framework: ``/sys/class/powercap/intel-rapl:*/energy_uj``.

Layout (Linux ``Documentation/power/powercap/powercap.rst``): each zone is a folder
``intel-rapl:P`` (a package, ``name`` = ``package-P``; ``psys`` on some laptops) with sub-zones
``intel-rapl:P:S`` (``core``, ``uncore``, ``dram``), each holding ``energy_uj`` (a cumulative counter
in microjoules) and ``max_energy_range_uj`` (the counter wraps to 0 after it). AMD Zen CPUs use the
same driver and names. ``intel-rapl-mmio:P`` zones are a second interface to the same package
counters and are ignored when ``intel-rapl:P`` exists. The energy reported is the sum of the
package zones (sub-zones are a breakdown: ``core`` is part of the package). Since Linux 5.10
``energy_uj`` is readable by root only (CVE-2020-8694).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable

from edgeslim.device_bench.energy.base import (
    Sensor,
    SensorUnavailable,
    host_name,
    read_number,
    read_text,
    register_sensor,
    sysfs_path,
)

POWERCAP = "/sys/class/powercap"


def _rapl_zones(root: str) -> list[str]:
    """Zone folders with an ``energy_uj`` counter, MMIO duplicates of MSR packages left out."""
    zones = sorted(
        p
        for p in glob.glob(os.path.join(sysfs_path(root, POWERCAP), "intel-rapl*:*"))
        if os.path.exists(os.path.join(p, "energy_uj"))
    )
    msr = {os.path.basename(p).split(":", 1)[1] for p in zones if os.path.basename(p).startswith("intel-rapl:")}
    return [
        p
        for p in zones
        if not (os.path.basename(p).startswith("intel-rapl-mmio:") and os.path.basename(p).split(":", 1)[1] in msr)
    ]


@register_sensor("rapl")
class RaplSensor(Sensor):
    """RAPL energy counters (packages summed; sub-zones as a breakdown)."""

    source = "RAPL"
    priority = 10

    def __init__(self, zones: list[str]) -> None:
        super().__init__()
        self.kind = "energy"
        self.paths: dict[str, str] = {}
        for zone in zones:
            label = read_text(os.path.join(zone, "name")) or os.path.basename(zone)
            channel = label if label not in self.paths else f"{label} ({os.path.basename(zone)})"
            self.paths[channel] = os.path.join(zone, "energy_uj")
            span = read_number(os.path.join(zone, "max_energy_range_uj"))
            if span:
                self.wrap_j[channel] = span / 1e6
            if os.path.basename(zone).count(":") == 1 and (label.startswith("package") or label == "psys"):
                self.totals.append(channel)
        packages = [c for c in self.totals if c.startswith("package")]
        self.totals = packages or self.totals  # psys counts the whole platform: only without package zones
        self.channels = list(self.paths)
        where = ", ".join(os.path.basename(os.path.dirname(self.paths[c])) for c in self.totals)
        self.description = f"rapl {'+'.join(self.totals)} ({POWERCAP}/{where})"

    @classmethod
    def probe(cls, root: str = "/", runner: Callable[[list[str]], str] | None = None) -> Sensor:
        zones = _rapl_zones(root)
        if not zones:
            raise SensorUnavailable(f"rapl: no {POWERCAP}/intel-rapl:*/energy_uj")
        sensor = cls(zones)
        if not sensor.totals:
            raise SensorUnavailable(f"rapl: no package zone among {', '.join(sensor.channels)}")
        try:
            sensor.read()
        except PermissionError as exc:
            raise SensorUnavailable(
                f"energy_uj is root-only ({exc.filename}: readable by root only since Linux 5.10, CVE-2020-8694); "
                f"run `sudo chmod a+r {POWERCAP}/intel-rapl:*/energy_uj` on {host_name()} (until the next reboot) "
                "or bench as root",
                present=True,
            ) from exc
        return sensor

    def read(self) -> dict[str, float]:
        out = {}
        for channel, path in self.paths.items():
            value = read_number(path)
            if value is None:
                raise SensorUnavailable(f"rapl: {path} gave no number", present=True)
            out[channel] = value / 1e6
        return out
