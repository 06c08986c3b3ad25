"""The INA3221 rails of NVIDIA Jetson boards on L4T 32 (JetPack 4: Nano, TX2, Xavier), an IIO device.

Layout: ``/sys/bus/i2c/drivers/ina3221x/<bus>-<addr>/iio:device<K>/`` with, per channel N,
``rail_name_N`` (``POM_5V_IN``, ``POM_5V_GPU``, ``POM_5V_CPU`` on a Nano; ``VDD_IN`` ... on Xavier NX),
``in_power{N}_input`` (milliwatts), ``in_current{N}_input`` (milliamperes) and ``in_voltage{N}_input``
(millivolts). JetPack 5 and later expose the same monitor through hwmon (:mod:`.hwmon`). The
module's input rail (``POM_5V_IN`` / ``VDD_IN``) feeds the others: when present it alone is the
energy reported, else the sum of all rails.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable

from edgeslim.device_bench.energy.base import (
    Sensor,
    SensorUnavailable,
    read_number,
    read_text,
    register_sensor,
    sysfs_path,
)

INA3221X = "/sys/bus/i2c/drivers/ina3221x"
_INPUT_RAILS = re.compile(r"^(POM_5V_IN|VDD_IN)$")


@register_sensor("jetson-ina3221")
class JetsonIioSensor(Sensor):
    """Jetson INA3221 rails (IIO, JetPack 4): ``in_power*_input`` in mW, names from ``rail_name_*``."""

    source = "ina3221x"
    priority = 30

    def __init__(self, rails: dict[str, dict[str, str]], base: str = INA3221X) -> None:
        super().__init__()
        self.kind = "power"
        self.interval_s = 0.005
        self.paths = rails
        self.channels = list(rails)
        self.totals = [c for c in self.channels if _INPUT_RAILS.match(c)] or list(self.channels)
        folders = sorted({os.path.relpath(os.path.dirname(rails[c]["mw"]), base) for c in self.totals})
        self.description = f"jetson-ina3221 {'+'.join(self.totals)} ({INA3221X}/{','.join(folders)})"

    @classmethod
    def probe(cls, root: str = "/", runner: Callable[[list[str]], str] | None = None) -> Sensor:
        base = sysfs_path(root, INA3221X)
        rails: dict[str, dict[str, str]] = {}
        for dev in sorted(glob.glob(os.path.join(base, "*", "iio:device*"))):
            for path in sorted(glob.glob(os.path.join(dev, "in_power*_input"))):
                n = os.path.basename(path)[len("in_power") : -len("_input")]
                name = read_text(os.path.join(dev, f"rail_name_{n}")) or f"power{n}"
                if name in rails:
                    name = f"{name} ({os.path.basename(os.path.dirname(dev))})"
                rails[name] = {"mw": path}
        if not rails:
            raise SensorUnavailable(f"jetson-ina3221: no {INA3221X}/*/iio:device*/in_power*_input")
        sensor = cls(rails, base)
        try:
            sensor.read()
        except PermissionError as exc:
            raise SensorUnavailable(
                f"jetson-ina3221: {exc.filename} is not readable by this user; bench as root or a user who may read it",
                present=True,
            ) from exc
        return sensor

    def read(self) -> dict[str, float]:
        out = {}
        for channel, paths in self.paths.items():
            mw = read_number(paths["mw"])
            if mw is None:
                raise SensorUnavailable(f"jetson-ina3221: {paths['mw']} gave no number", present=True)
            out[channel] = mw / 1e3
        return out
