"""TensorRT engines on a CUDA GPU: built, verified against PyTorch, benched, with GPU energy (marker ``gpu``; never in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgeslim.device_bench import bench
from edgeslim.device_bench.energy import detect_sensor
from edgeslim.exporters import export
from edgeslim.exporters.tensorrt import missing_backend

pytestmark = pytest.mark.gpu


def test_backend_present() -> None:
    assert missing_backend() == []  # a gpu run on a machine without TensorRT is a setup error, not a skip


@pytest.mark.parametrize("quant", ["fp32", "fp16", "int8"])
def test_engine_matches_torch_and_benches(
    tiny_model: torch.nn.Module, example: torch.Tensor, tmp_path: Path, quant: str
) -> None:
    result = export(tiny_model, "tensorrt", tmp_path / f"m-{quant}.engine", example, quant=quant)
    v = result.verification
    assert v is not None and v.passed
    assert result.metadata["engine"]["gpu"] == torch.cuda.get_device_name(0)
    assert result.metadata["engine"]["build_s"] > 0
    if quant == "int8":
        assert result.metadata["onnx"]["activations"] == "s8s8"
    report = bench(
        result.path,
        "local",
        runs=20,
        runtime="tensorrt",
        energy="auto",
        energy_seconds=1.0,
        results_file=tmp_path / "r.jsonl",
    )
    row = report.summary()["results"][0]
    assert row["runtime"] == "tensorrt" and row["p50"] > 0
    sensor, _ = detect_sensor("/", prefer=("nvml", "nvidia-smi"))
    assert sensor is not None and row["energy_sensor"] == sensor.description
    assert row["avg_watts"] is not None and row["joules_per_inference"] is not None


def test_nvml_reads_a_growing_energy_counter() -> None:
    sensor, reason = detect_sensor("/", prefer=("nvml",), only=True)
    assert sensor is not None, reason
    first = sensor.read()
    x = torch.randn(4096, 4096, device="cuda")
    for _ in range(200):
        x = x @ x / 4096
    torch.cuda.synchronize()
    second = sensor.read()
    assert all(second[c] >= first[c] for c in sensor.channels)
    assert sum(second.values()) > sum(first.values())
