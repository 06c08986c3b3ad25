"""Energy per inference, read on the benchmark device (``edgeslim bench --energy``).

One reader file per sensor, registered with a preference (``priority``): :mod:`.rapl` (Intel/AMD RAPL),
:mod:`.hwmon` (hwmon power/energy sensors, Jetson INA3221 on JetPack 5+), :mod:`.jetson` (Jetson
INA3221 on JetPack 4), :mod:`.pmic` (Raspberry Pi 5 PMIC), :mod:`.nvidia` (NVML, ``nvidia-smi``).
:mod:`.measure` finds the sensor and measures (idle baseline subtracted). Every module imports
only the standard library and this package: the bench agent has them pasted in
(:func:`edgeslim.device_bench.agent_build.build_agent`).
"""

from __future__ import annotations

from edgeslim.device_bench.energy import hwmon, jetson, nvidia, pmic, rapl  # noqa: F401  (registration)
from edgeslim.device_bench.energy.base import SENSORS, Sensor, SensorUnavailable, register_sensor, sensor_order
from edgeslim.device_bench.energy.measure import detect_sensor, integrate, measure_energy

__all__ = [
    "SENSORS",
    "Sensor",
    "SensorUnavailable",
    "detect_sensor",
    "integrate",
    "measure_energy",
    "register_sensor",
    "sensor_order",
]
