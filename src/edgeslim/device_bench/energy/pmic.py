"""The Raspberry Pi 5 PMIC: ``vcgencmd pmic_read_adc`` (rail currents and voltages).

The firmware prints one line per ADC channel, a rail's current as ``NAME_A current(N)=0.35421000A``
and its voltage as ``NAME_V volt(M)=0.80116200V`` (some firmware prints ``NAME_A=...A`` /
``NAME_V=...V``). The power is the sum over the rails that have both of current x voltage;
``EXT5V_V`` (the USB-C input voltage) and ``BATT_V`` have no current and are left out. The sum is
what the SoC-side rails draw (the PMIC's own conversion losses are not measured; they are in the
idle baseline only as far as they do not grow with the load).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from edgeslim.device_bench.energy.base import Sensor, SensorUnavailable, host_name, register_sensor, run_command

PMIC_COMMAND = ["vcgencmd", "pmic_read_adc"]
_PMIC_LINE = re.compile(r"^\s*(\S+)_([AV])(?:\s+\w+\(\d+\))?\s*=\s*([-+0-9.eE]+)\s*[AV]?\s*$")


def parse_pmic_adc(text: str) -> dict[str, float]:
    """``{rail: watts}`` of ``vcgencmd pmic_read_adc`` output (rails with both a current and a voltage)."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        m = _PMIC_LINE.match(line)
        if m:
            (amps if m.group(2) == "A" else volts)[m.group(1)] = float(m.group(3))
    return {rail: amps[rail] * volts[rail] for rail in amps if rail in volts}


@register_sensor("pmic")
class PmicSensor(Sensor):
    """Raspberry Pi 5 PMIC rails through ``vcgencmd pmic_read_adc`` (sum of current x voltage)."""

    source = "vcgencmd"
    priority = 40
    interval_s = 0.05

    def __init__(self, runner: Callable[[list[str]], str], rails: list[str]) -> None:
        super().__init__()
        self.kind = "power"
        self.runner = runner
        self.channels = list(rails)
        self.totals = list(rails)
        self.description = f"pmic {len(rails)} rails (vcgencmd pmic_read_adc, sum of current x voltage)"

    @classmethod
    def probe(cls, root: str = "/", runner: Callable[[list[str]], str] | None = None) -> Sensor:
        run = runner or run_command
        try:
            text = run(PMIC_COMMAND)
        except FileNotFoundError as exc:
            raise SensorUnavailable("pmic: vcgencmd not found") from exc
        rails = parse_pmic_adc(text)
        if not rails:
            first = (text.strip().splitlines() or ["no output"])[0][:120]
            raise SensorUnavailable(
                f"pmic: vcgencmd pmic_read_adc on {host_name()} reports no rail current and "
                f"voltage ({first!r}; it needs a Raspberry Pi 5 and current firmware)",
                present=True,
            )
        return cls(run, sorted(rails))

    def read(self) -> dict[str, float]:
        rails = parse_pmic_adc(self.runner(PMIC_COMMAND))
        return {rail: rails.get(rail, 0.0) for rail in self.channels}
