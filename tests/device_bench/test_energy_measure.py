"""Energy per inference: counter wrap-around, power integration, idle baseline subtracted; the agent and bench report it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeslim.device_bench import bench
from edgeslim.device_bench.agent_build import build_agent
from edgeslim.device_bench.energy import detect_sensor, integrate, measure_energy
from edgeslim.device_bench.energy.hwmon import HwmonSensor
from edgeslim.device_bench.energy.rapl import RaplSensor

DATA = Path(__file__).parent / "data" / "sysfs"
PKG = "sys/class/powercap/intel-rapl:0/energy_uj"


def _write(path: Path, value: float) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{int(value)}\n")
    os.replace(tmp, path)  # the sampler thread never sees a half-written file


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_integrate_counter_wraps_and_power_trapezoid() -> None:
    sensor = RaplSensor.probe(str(DATA / "intel-desktop"))
    span = sensor.wrap_j["package-0"]
    base = dict.fromkeys(sensor.channels, 0.0)
    samples = [
        (0.0, {**base, "package-0": span - 3.0}),
        (1.0, {**base, "package-0": 2.0}),
        (2.0, {**base, "package-0": 9.0}),
    ]
    assert integrate(sensor, samples)["package-0"] == pytest.approx(12.0)  # 3 J to the wrap, 2 J after, then 7 J
    power = HwmonSensor.probe(str(DATA / "jetson-orin-nano"))
    zero = dict.fromkeys(power.channels, 0.0)
    samples = [
        (0.0, {**zero, "ina3221/VDD_IN": 2.0}),
        (0.5, {**zero, "ina3221/VDD_IN": 4.0}),
        (2.0, {**zero, "ina3221/VDD_IN": 4.0}),
    ]
    assert integrate(power, samples)["ina3221/VDD_IN"] == pytest.approx(0.5 * 3.0 + 1.5 * 4.0)


def test_rapl_energy_per_inference_across_a_wrap(tmp_path: Path) -> None:
    shutil.copytree(DATA / "intel-desktop", tmp_path / "root")
    counter = tmp_path / "root" / PKG
    sensor = RaplSensor.probe(str(tmp_path / "root"))
    span_uj = sensor.wrap_j["package-0"] * 1e6
    clock = FakeClock()
    state = {"uj": span_uj - 40e6}  # wraps during the inferences

    def advance(seconds: float, watts: float) -> None:
        clock.t += seconds
        state["uj"] = (state["uj"] + watts * seconds * 1e6) % span_uj
        _write(counter, state["uj"])

    _write(counter, state["uj"])
    step = 1 / 64  # seconds per inference, exact in binary: the loop stops after exactly 4 s
    out = measure_energy(
        sensor,
        lambda: advance(step, 12.0),
        idle_s=5.0,
        active_s=4.0,
        min_runs=10,
        clock=clock,
        sleep=lambda s: advance(s, 4.0),
    )
    assert out["energy_runs"] == 256 and out["energy_active_s"] == pytest.approx(4.0)
    assert out["idle_watts"] == pytest.approx(4.0) and out["active_watts"] == pytest.approx(12.0)
    assert out["avg_watts"] == pytest.approx(8.0)
    assert out["joules_per_inference"] == pytest.approx(8.0 * step)  # 0.125 J above idle per 15.6 ms inference
    assert out["energy_sensor"].startswith("rapl package-0") and "energy_note" not in out


def test_power_sensor_energy_per_inference_and_no_gain_note(tmp_path: Path) -> None:
    shutil.copytree(DATA / "jetson-orin-nano", tmp_path / "root")
    curr = tmp_path / "root" / "sys/class/hwmon/hwmon1/curr1_input"
    sensor = HwmonSensor.probe(str(tmp_path / "root"))
    clock = FakeClock()
    _write(curr, 1000)  # 5.048 V x 1.0 A idle

    def tick(s: float) -> None:
        clock.t += s

    step = 1 / 256
    out = measure_energy(
        sensor,
        lambda: tick(step),
        idle_s=2.0,
        active_s=1.0,
        min_runs=10,
        clock=clock,
        sleep=tick,
        on_phase=lambda phase: _write(curr, 1500),
    )  # 1.5 A while inferring
    assert out["energy_kind"] == "power" and out["energy_runs"] == 256
    assert out["idle_watts"] == pytest.approx(5.048) and out["avg_watts"] == pytest.approx(5.048 * 0.5)
    assert out["joules_per_inference"] == pytest.approx(5.048 * 0.5 * step)
    assert out["energy_channels_w"]["ina3221/VDD_SOC"] == pytest.approx(5.048 * 0.640)

    _write(curr, 1000)
    flat = measure_energy(sensor, lambda: tick(step), idle_s=1.0, active_s=1.0, clock=clock, sleep=tick)
    assert flat["joules_per_inference"] == pytest.approx(0.0, abs=1e-12)
    assert "no power above the idle baseline" in flat["energy_note"]


def _agent_result(tmp_path: Path, model: Path, *extra: str) -> dict:
    script = tmp_path / "agent.py"
    script.write_text(build_agent())
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            str(script),
            "bench",
            "--model",
            str(model),
            "--runs",
            "3",
            "--warmup",
            "0",
            "--threads",
            "1",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    events = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("@@edgeslim ")]
    return {"rc": proc.returncode, "events": events, "stderr": proc.stderr}


def test_built_agent_reads_a_sysfs_tree(models: dict[str, Path], tmp_path: Path) -> None:
    run = _agent_result(
        tmp_path,
        models["small"],
        "--energy",
        "auto",
        "--energy-seconds",
        "0.2",
        "--energy-root",
        str(DATA / "amd-2socket"),
    )
    assert run["rc"] == 0, run
    result = run["events"][-1]
    assert result["event"] == "result" and len(result["latencies_ms"]) == 3
    assert result["energy_sensor"] == "rapl package-0+package-1 (/sys/class/powercap/intel-rapl:0, intel-rapl:1)"
    assert result["energy_unavailable_reason"] is None and result["energy_runs"] >= 3
    assert result["joules_per_inference"] == 0.0 and "energy_note" in result  # files that never change: no energy
    phases = [e["phase"] for e in run["events"] if e["event"] == "energy"]
    assert phases == ["idle", "active"]

    forced = _agent_result(tmp_path, models["small"], "--energy", "pmic", "--energy-root", str(DATA / "amd-2socket"))
    assert forced["rc"] == 0 and forced["events"][-1]["joules_per_inference"] is None
    assert forced["events"][-1]["energy_unavailable_reason"].startswith("not available: no vcgencmd on ")
    bad = _agent_result(tmp_path, models["small"], "--energy", "watts")
    assert bad["rc"] != 0 and "unknown energy sensor 'watts'; known: auto, " in bad["events"][-1]["message"]


def test_bench_energy_on_this_machine(models: dict[str, Path], tmp_path: Path) -> None:
    expected_sensor, expected_reason = detect_sensor("/")
    report = bench(
        models["small"],
        "local",
        runs=5,
        threads=1,
        energy="auto",
        energy_seconds=0.2,
        results_file=tmp_path / "r.jsonl",
    )
    row = report.summary()["results"][0]
    assert row["p50"] > 0  # latency is there with or without a sensor
    assert row["energy_unavailable_reason"] == expected_reason
    if expected_sensor is None:  # this machine (and CI): no sensor, and the reason names what is missing
        assert row["joules_per_inference"] is None and row["avg_watts"] is None and row["energy_sensor"] is None
        assert expected_reason.startswith("not available: no RAPL/hwmon/")
    else:
        assert row["energy_sensor"] == expected_sensor.description and row["joules_per_inference"] is not None
    plain = bench(models["small"], "local", runs=2, threads=1).summary()["results"][0]
    assert "joules_per_inference" not in plain  # energy keys only when asked for
