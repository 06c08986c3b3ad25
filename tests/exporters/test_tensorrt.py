"""TensorRT target without a GPU: the exporter and the bench runtime refuse with a message naming what is missing.

The GPU half (engines built, verified and benched) is in ``test_tensorrt_gpu.py`` (marker ``gpu``).
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from edgeslim.device_bench import bench
from edgeslim.device_bench.errors import RuntimeMissingError
from edgeslim.device_bench.runtimes import RUNTIMES, runtimes_for
from edgeslim.exporters import EXPORTERS, export
from edgeslim.exporters.errors import ExportConfigError, MissingBackendError
from edgeslim.exporters.tensorrt import missing_backend

MISSING = missing_backend()


@pytest.fixture()
def tiny_model() -> torch.nn.Module:
    """An untrained CNN: nothing is built, so nothing needs to be accurate (the trained fixture costs ~40 s)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    ).eval()


needs_no_gpu = pytest.mark.skipif(
    not MISSING, reason="this machine has TensorRT, the driver and a GPU: see test_tensorrt_gpu.py"
)


@needs_no_gpu
def test_cli_export_without_gpu_names_what_is_missing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeslim.cli",
            "export",
            "--model",
            "resnet18-fmnist",
            "--format",
            "tensorrt",
            "--out",
            "R.engine",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert proc.returncode != 0
    text = " ".join((proc.stdout + proc.stderr).split())  # rich wraps long lines
    assert (
        "MissingBackendError: TensorRT export needs an NVIDIA GPU with its driver and the `tensorrt` Python package"
        in text
    )
    for item in MISSING:
        assert item.split(" (")[0] in text  # e.g. "the `tensorrt` Python package", "a CUDA GPU"
    assert "export --format onnx here and build the engine there" in text and "Traceback" not in text
    assert not (tmp_path / "R.engine").exists() and list(tmp_path.iterdir()) == []


@needs_no_gpu
def test_api_names_only_what_is_missing(
    tiny_model: torch.nn.Module, example: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(MissingBackendError, match=r"missing on this machine: .*a CUDA GPU"):
        export(tiny_model, "tensorrt", tmp_path / "m.engine", example, verify=False)
    fake = types.ModuleType("tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)  # a module that is not TensorRT (a shadowing tensorrt.py)
    with pytest.raises(
        MissingBackendError, match=r"which is not NVIDIA's TensorRT: a file named tensorrt.py shadows it"
    ):
        export(tiny_model, "tensorrt", tmp_path / "m.engine", example, verify=False)
    fake.Builder = object  # type: ignore[attr-defined]  # the package, but still no GPU
    with pytest.raises(MissingBackendError) as info:
        export(tiny_model, "tensorrt", tmp_path / "m.engine", example, verify=False)
    message = str(info.value)
    assert "missing on this machine: the NVIDIA driver" in message and "import failed" not in message
    assert "a CUDA GPU (torch.cuda.is_available() is False)" in message
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_unsupported_precision_and_layout_refused_first(
    tiny_model: torch.nn.Module, example: torch.Tensor, tmp_path: Path
) -> None:
    with pytest.raises(
        ExportConfigError, match="'w8a16' is not offered for TensorRT; TensorRT offers fp32, fp16, int8"
    ):
        export(
            tiny_model,
            "tensorrt",
            tmp_path / "m.engine",
            example,
            quant="w8a16",
            verify=False,
            calibration=[example.repeat(8, 1, 1, 1)],
        )
    with pytest.raises(ExportConfigError, match="TensorRT engines take NCHW input"):
        export(tiny_model, "tensorrt", tmp_path / "m.engine", example, layout="nhwc", verify=False)


def test_registered_as_exporter_and_bench_runtime() -> None:
    assert "tensorrt" in EXPORTERS.names() and EXPORTERS.get("tensorrt").suffix == ".engine"
    spec = RUNTIMES.get("tensorrt")
    assert spec.suffixes == (".engine", ".plan") and [r.name for r in runtimes_for(".engine")] == ["tensorrt"]


@needs_no_gpu
def test_benchmark_refuses_without_gpu_and_writes_nothing(tmp_path: Path) -> None:
    script = Path(__file__).parents[2] / "benchmarks" / "tensorrt.py"
    results = script.parent / "results"
    before = sorted(p.name for p in results.iterdir())
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=script.parent, timeout=300, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert "benchmarks/tensorrt.py needs an NVIDIA GPU; missing on this machine: " in proc.stderr
    assert "Nothing was measured and nothing was written." in proc.stderr
    if "tensorrt" not in sys.modules:  # run from its own folder, the script must not import itself as `tensorrt`
        assert "the `tensorrt` Python package (import failed: No module named 'tensorrt')" in proc.stderr
    assert sorted(p.name for p in results.iterdir()) == before and not (results / "tensorrt.json").exists()


@pytest.mark.skipif("tensorrt" in sys.modules or not MISSING, reason="tensorrt importable here")
def test_bench_of_an_engine_without_tensorrt_says_how_to_install(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not built here")
    with pytest.raises(
        RuntimeMissingError, match=r"runtime tensorrt is not installed for .*pip install --user tensorrt"
    ):
        bench(engine, "local", runs=1, results_file=tmp_path / "r.jsonl")
