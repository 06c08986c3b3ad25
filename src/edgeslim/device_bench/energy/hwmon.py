"""hwmon power and energy sensors: ``/sys/class/hwmon/hwmon*``.

Attributes read (Linux ``Documentation/hwmon/sysfs-interface.rst``): ``energy[N]_input`` (cumulative,
microjoules), ``power[N]_input`` / ``power[N]_average`` (microwatts), and for current/voltage
monitors without a power attribute, such as the INA3221 on NVIDIA Jetson modules
(``Documentation/hwmon/ina3221.rst``), ``curr[N]_input`` (milliamperes) times ``in[N]_input`` (bus
voltage, millivolts) for each channel N that has an ``in[N]_label`` (the INA3221's ``in4..in7`` are
shunt voltages in microvolts and are never paired). Labels come from ``*_label`` (``VDD_IN``,
``Esocket0``), else the attribute name; a channel is named ``DEVICE/LABEL`` after the device's
``name`` file. Older drivers keep the attributes in ``hwmonN/device/``.

Energy counters are used when the device has any (they need no integration), else power readings.
The reported energy is the sum of the channels that measure a whole input where such a channel is
labelled (``VDD_IN`` / ``POM_5V_IN``: a Jetson module's input rail, which feeds the other rails;
``Esocket*`` of ``amd_energy``, whose ``Ecore*`` channels are parts of the socket), else of all
channels.
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

HWMON = "/sys/class/hwmon"
#: Labels of channels that measure everything the others measure (their sum would count twice).
WHOLE_INPUT_LABELS = re.compile(r"^(VDD_IN|POM_5V_IN|VIN_SYS_5V0|Esocket\d*)$")
_HWMON_ATTR = re.compile(r"^(energy|power|curr)(\d+)_(input|average)$")


def _hwmon_channels(folder: str) -> list[tuple[str, str, dict[str, str]]]:
    """``(kind, label, {role: path})`` for each power/energy channel of one hwmon folder."""
    out = []
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    taken: set[str] = set()
    for attr in names:
        m = _HWMON_ATTR.match(attr)
        if not m:
            continue
        what, n, _ = m.groups()
        key = f"{what}{n}"
        if key in taken:  # power1_input and power1_average: one channel
            continue
        label_path = os.path.join(folder, f"{'in' if what == 'curr' else what}{n}_label")
        label = read_text(os.path.join(folder, f"{what}{n}_label")) or read_text(label_path) or key
        if what == "curr":
            volts = os.path.join(folder, f"in{n}_input")
            if not (os.path.exists(label_path) and os.path.exists(volts)):
                continue
            out.append(("power", label, {"ma": os.path.join(folder, attr), "mv": volts}))
        else:
            out.append(("energy" if what == "energy" else "power", label, {what: os.path.join(folder, attr)}))
        taken.add(key)
    return out


@register_sensor("hwmon")
class HwmonSensor(Sensor):
    """hwmon energy counters, else power readings (see the module docstring for which are summed)."""

    source = "hwmon"
    priority = 20

    def __init__(self, kind: str, channels: dict[str, dict[str, str]]) -> None:
        super().__init__()
        self.kind = kind
        self.paths = channels
        self.channels = list(channels)
        whole = [c for c in self.channels if WHOLE_INPUT_LABELS.match(c.split("/", 1)[1])]
        self.totals = whole or list(self.channels)
        self.interval_s = 0.01 if kind == "energy" else 0.005
        folders = sorted({os.path.basename(os.path.dirname(p)) for c in self.totals for p in channels[c].values()})
        self.description = f"hwmon {kind} {'+'.join(self.totals)} ({HWMON}/{','.join(folders)})"

    @classmethod
    def probe(cls, root: str = "/", runner: Callable[[list[str]], str] | None = None) -> Sensor:
        found: dict[str, dict[str, dict[str, str]]] = {"energy": {}, "power": {}}
        devices = sorted(glob.glob(os.path.join(sysfs_path(root, HWMON), "hwmon*")))
        denied = []
        for dev in devices:
            name = read_text(os.path.join(dev, "name")) or os.path.basename(dev)
            for folder in (dev, os.path.join(dev, "device")):
                for kind, label, paths in _hwmon_channels(folder):
                    channel = f"{name}/{label}"
                    if channel in found[kind]:
                        channel = f"{name}/{label} ({os.path.basename(dev)})"
                    found[kind][channel] = paths
        kind = "energy" if found["energy"] else "power"
        if not found[kind]:
            where = f"{len(devices)} hwmon device(s)" if devices else f"no {HWMON}"
            raise SensorUnavailable(f"hwmon: no power*_input, energy*_input or curr*_input+in*_input sensor ({where})")
        sensor = cls(kind, found[kind])
        try:
            sensor.read()
        except PermissionError as exc:
            denied.append(exc.filename)
        if denied:
            raise SensorUnavailable(
                f"hwmon: {denied[0]} is not readable by this user; bench as a user who may read it (or root)",
                present=True,
            )
        return sensor

    def read(self) -> dict[str, float]:
        out = {}
        for channel, paths in self.paths.items():
            values = {role: read_number(p) for role, p in paths.items()}
            if any(v is None for v in values.values()):
                raise SensorUnavailable(f"hwmon: {channel} gave no reading", present=True)
            if "energy" in values:
                out[channel] = values["energy"] / 1e6  # type: ignore[operator]
            elif "power" in values:
                out[channel] = values["power"] / 1e6  # type: ignore[operator]
            else:
                out[channel] = values["ma"] * values["mv"] / 1e6  # type: ignore[operator]
        return out
