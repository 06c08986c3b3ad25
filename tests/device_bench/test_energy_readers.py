"""Energy sensor readers against sysfs trees and command outputs written after the documented layouts (data/sysfs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgeslim.device_bench.energy import SENSORS, detect_sensor, rapl, sensor_order
from edgeslim.device_bench.energy.base import SensorUnavailable
from edgeslim.device_bench.energy.hwmon import HwmonSensor
from edgeslim.device_bench.energy.jetson import JetsonIioSensor
from edgeslim.device_bench.energy.nvidia import NvidiaSmiSensor, NvmlSensor, parse_power_draw
from edgeslim.device_bench.energy.pmic import PmicSensor, parse_pmic_adc
from edgeslim.device_bench.energy.rapl import RaplSensor

DATA = Path(__file__).parent / "data" / "sysfs"
PMIC_OUT = (DATA / "commands" / "vcgencmd_pmic_read_adc.txt").read_text()
SMI_OUT = (DATA / "commands" / "nvidia-smi_power_draw_2gpus.txt").read_text()


def _runner(outputs: dict[str, str]):
    def run(argv: list[str]) -> str:
        if argv[0] not in outputs:
            raise FileNotFoundError(argv[0])
        return outputs[argv[0]]

    return run


def test_rapl_intel_sums_the_package_only() -> None:
    sensor = RaplSensor.probe(str(DATA / "intel-desktop"))
    assert sensor.kind == "energy" and sensor.totals == ["package-0"]
    # the MMIO zone is the same package: left out; psys and sub-zones are a breakdown
    assert set(sensor.channels) == {"package-0", "core", "uncore", "psys"}
    reading = sensor.read()
    assert reading["package-0"] == pytest.approx(81342.271940) and reading["core"] == pytest.approx(30485.166017)
    assert sensor.wrap_j["package-0"] == pytest.approx(262143.328850)
    assert sensor.description == "rapl package-0 (/sys/class/powercap/intel-rapl:0)"


def test_rapl_amd_two_sockets() -> None:
    sensor = RaplSensor.probe(str(DATA / "amd-2socket"))
    assert sensor.totals == ["package-0", "package-1"]
    assert sensor.wrap_j == {c: pytest.approx(65532.610987) for c in sensor.channels}
    assert "core (intel-rapl:1:0)" in sensor.channels  # two zones named "core": told apart


def test_rapl_root_only_energy_uj_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(path: str) -> float:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(rapl, "read_number", lambda p: denied(p) if p.endswith("energy_uj") else None)
    with pytest.raises(SensorUnavailable) as info:
        RaplSensor.probe(str(DATA / "intel-desktop"))
    assert info.value.present
    assert info.value.reason.startswith("energy_uj is root-only (")
    assert (
        "intel-rapl:0/energy_uj" in info.value.reason
        and "sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj" in info.value.reason
    )
    # detection reports the blocked sensor, not "none found"
    sensor, reason = detect_sensor(str(DATA / "intel-desktop"), _runner({}))
    assert sensor is None and reason is not None
    assert reason.startswith("not available: energy_uj is root-only") and "no RAPL" not in reason


def test_hwmon_jetson_orin_ina3221_uses_vdd_in() -> None:
    sensor = HwmonSensor.probe(str(DATA / "jetson-orin-nano"))
    assert sensor.kind == "power"
    assert sensor.channels == ["ina3221/VDD_IN", "ina3221/VDD_CPU_GPU_CV", "ina3221/VDD_SOC"]  # no shunt/sum channels
    assert sensor.totals == ["ina3221/VDD_IN"]  # the input rail feeds the others
    watts = sensor.read()
    assert watts["ina3221/VDD_IN"] == pytest.approx(5.048 * 1.320)
    assert watts["ina3221/VDD_SOC"] == pytest.approx(5.048 * 0.640)


def test_hwmon_amd_energy_sums_sockets_not_cores() -> None:
    sensor = HwmonSensor.probe(str(DATA / "amd-energy"))
    assert sensor.kind == "energy" and sensor.totals == ["amd_energy/Esocket0"]
    assert sensor.read()["amd_energy/Esocket0"] == pytest.approx(91337.217604)
    assert "amd_energy/Ecore000" in sensor.channels


def test_hwmon_power_average_and_legacy_device_folder() -> None:
    sensor = HwmonSensor.probe(str(DATA / "amdgpu"))
    assert sensor.kind == "power" and sensor.totals == ["amdgpu/PPT", "legacy_meter/power1"]
    assert sensor.read() == {"amdgpu/PPT": pytest.approx(31.0), "legacy_meter/power1": pytest.approx(4.5)}


def test_hwmon_without_power_sensors_is_absent(tmp_path: Path) -> None:
    shutil.copytree(
        DATA / "jetson-orin-nano/sys/class/hwmon/hwmon0", tmp_path / "sys/class/hwmon/hwmon0"
    )  # thermal only
    with pytest.raises(SensorUnavailable, match=r"hwmon: no power\*_input.*\(1 hwmon device\(s\)\)") as info:
        HwmonSensor.probe(str(tmp_path))
    assert not info.value.present
    with pytest.raises(SensorUnavailable, match=r"\(no /sys/class/hwmon\)"):
        HwmonSensor.probe(str(DATA / "jetson-nano-l4t32"))


def test_jetson_l4t32_iio_rails() -> None:
    sensor = JetsonIioSensor.probe(str(DATA / "jetson-nano-l4t32"))
    assert sensor.kind == "power" and sensor.totals == ["POM_5V_IN"]
    assert sensor.read() == {
        "POM_5V_IN": pytest.approx(1.996),
        "POM_5V_GPU": pytest.approx(0.039),
        "POM_5V_CPU": pytest.approx(0.326),
    }
    assert sensor.description == "jetson-ina3221 POM_5V_IN (/sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0)"


def test_pi5_pmic_sums_current_times_voltage() -> None:
    rails = parse_pmic_adc(PMIC_OUT)
    assert len(rails) == 12 and "EXT5V" not in rails and "BATT" not in rails  # voltages without a current
    assert rails["VDD_CORE"] == pytest.approx(0.71720400 * 0.72007200)
    sensor = PmicSensor.probe("/", _runner({"vcgencmd": PMIC_OUT}))
    assert sensor.kind == "power" and sum(sensor.read().values()) == pytest.approx(sum(rails.values()))
    assert sum(rails.values()) == pytest.approx(1.61594, abs=1e-5)  # 12 rails: sum of A x V of the file
    assert parse_pmic_adc("VDD_CORE_A=1.5A\nVDD_CORE_V=0.8V\n") == {"VDD_CORE": pytest.approx(1.2)}


def test_pi_without_pmic_support_is_present_but_unreadable() -> None:
    with pytest.raises(SensorUnavailable, match="reports no rail current") as info:
        PmicSensor.probe("/", _runner({"vcgencmd": 'error=1 error_msg="Command not registered"\n'}))
    assert info.value.present


def test_nvidia_smi_power_draw() -> None:
    assert parse_power_draw(SMI_OUT) == [71.42, None]
    calls: list[list[str]] = []

    def run(argv: list[str]) -> str:
        calls.append(argv)
        return SMI_OUT

    sensor = NvidiaSmiSensor.probe("/", run)
    assert calls[0] == ["nvidia-smi", "--query-gpu=power.draw", "--format=csv,noheader,nounits"]
    assert sensor.channels == ["gpu0"] and sensor.read() == {"gpu0": pytest.approx(71.42)}


def test_nvml_counter_through_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeNvml:
        energy_mj = (123_456, 7_000)

        def nvmlInit(self) -> None: ...
        def nvmlDeviceGetCount(self) -> int:
            return 2

        def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
            return i

        def nvmlDeviceGetName(self, h: int) -> bytes:
            return b"NVIDIA H200"

        def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
            return self.energy_mj[h]

    import sys

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    sensor = NvmlSensor.probe()
    assert sensor.kind == "energy" and sensor.channels == ["gpu0 NVIDIA H200", "gpu1 NVIDIA H200"]
    assert sensor.read() == {"gpu0 NVIDIA H200": pytest.approx(123.456), "gpu1 NVIDIA H200": pytest.approx(7.0)}


def test_nothing_found_names_every_source_and_the_host(tmp_path: Path) -> None:
    sensor, reason = detect_sensor(
        str(tmp_path), _runner({}), prefer=[n for n in sensor_order() if n != "nvml"], only=True
    )
    assert sensor is None and reason is not None
    assert reason.startswith("not available: no RAPL/hwmon/ina3221x/vcgencmd/nvidia-smi on ")
    assert "rapl: no /sys/class/powercap/intel-rapl:*/energy_uj" in reason and "vcgencmd not found" in reason


def test_detection_order_and_preference() -> None:
    assert sensor_order()[:4] == ["rapl", "hwmon", "jetson-ina3221", "pmic"]
    root = DATA / "intel-desktop"
    sensor, _ = detect_sensor(str(root), _runner({"nvidia-smi": SMI_OUT}))
    assert sensor is not None and sensor.name == "rapl"
    sensor, _ = detect_sensor(str(root), _runner({"nvidia-smi": SMI_OUT}), prefer=["nvidia-smi"])
    assert sensor is not None and sensor.name == "nvidia-smi"  # a GPU runtime asks for the GPU's sensor first
    with pytest.raises(ValueError, match="unknown energy sensor 'watts'"):
        detect_sensor(str(root), prefer=["watts"])
    assert set(SENSORS) >= {"rapl", "hwmon", "jetson-ina3221", "pmic", "nvml", "nvidia-smi"}


def test_sensor_files_vanishing_mid_run_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(DATA / "intel-desktop", root)
    sensor = RaplSensor.probe(str(root))
    (root / "sys/class/powercap/intel-rapl:0/energy_uj").unlink()
    with pytest.raises(SensorUnavailable, match="energy_uj gave no number"):
        sensor.read()
