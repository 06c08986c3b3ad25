"""A bench computes the same top-1 as the exporter's runtime check: same images, runner and settings.

The reference ResNet-18 is exported to ONNX (fp32, int8, w8a16, and edgeslim's PT2E W16A16) and
TFLite (fp32, int8); each artefact's top-1 over 300 real Fashion-MNIST test images is computed on
the host with the exporter's runner, then by ``bench`` on the local target (the built agent in a
subprocess) from an ``eval.npz`` of the same images. Measured with ONNX Runtime 1.32: the W16A16
file computes 20.7 % with graph optimizations on and 93.7 % off; w8a16 is unaffected (93.3 %
either way), so the W16A16 file is what shows that the agent applies the file's setting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import edgeslim
from edgeslim.data import calibration_subset, fashion_mnist_loader
from edgeslim.device_bench import bench
from edgeslim.device_bench.runtimes.onnxruntime import GRAPH_OPTIMIZATION_KEY
from edgeslim.exporters.onnx import OrtRunner
from edgeslim.exporters.tflite import LiteRTRunner

pytestmark = pytest.mark.slow
N_IMAGES = 300
THREADS = 2
#: (format, quant) exported with edgeslim.export(model, format, ..., quant=quant)
EXPORTS = [("onnx", "fp32"), ("onnx", "int8"), ("onnx", "w8a16"), ("tflite", "fp32"), ("tflite", "int8")]


@pytest.fixture(scope="module")
def eval_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``x`` (NCHW float32) and ``y`` of the first 300 test images."""
    x, y = next(iter(fashion_mnist_loader("test", limit=N_IMAGES, batch_size=N_IMAGES)))
    path = tmp_path_factory.mktemp("bench_vs_export") / "eval.npz"
    np.savez(path, x=x.numpy(), y=y.numpy())
    return path


@pytest.fixture(scope="module")
def artefacts(eval_npz: Path, resnet18_fmnist: torch.nn.Module) -> dict[str, Path]:
    """``{"onnx-fp32": path, ...}``: verified exports of the reference ResNet-18, plus ``onnx-w16a16`` (PT2E int16)."""
    example = torch.from_numpy(np.load(eval_npz)["x"][:1])
    small = {"calibration_size": 128, "verify_samples": 128}
    out = {}
    for fmt, quant in EXPORTS:
        res = edgeslim.export(resnet18_fmnist, fmt, eval_npz.parent / f"{quant}.{fmt}", example, quant=quant,
                              verify=True, **small)
        out[f"{fmt}-{quant}"] = res.path
    q16 = edgeslim.quantize(resnet18_fmnist, (example,), "int16", calibration=calibration_subset("train", 128))
    res = edgeslim.export(q16, "onnx", eval_npz.parent / "w16a16.onnx", example, verify=True, **small)
    out["onnx-w16a16"] = res.path
    return out


def host_top1(path: Path, eval_npz: Path, batch: int) -> float:
    """Top-1 of ``path`` in the exporter's runner (what verification runs), in batches of ``batch``."""
    data = np.load(eval_npz)
    runner = OrtRunner(path, threads=THREADS) if path.suffix == ".onnx" else LiteRTRunner(path, threads=THREADS)
    hits = [np.asarray(runner(data["x"][i : i + batch])).argmax(1) == data["y"][i : i + batch]
            for i in range(0, len(data["x"]), batch)]
    return float(np.concatenate(hits).mean())


def test_bench_top1_equals_export_top1(artefacts: dict[str, Path], eval_npz: Path, tmp_path: Path) -> None:
    names = list(artefacts)
    report = bench([artefacts[n] for n in names], "local", runs=1, warmup=0, threads=THREADS, inputs=eval_npz,
                   results_file=tmp_path / "bench.jsonl")
    got = dict(zip(names, (r.data for r in report.results), strict=True))
    for name, data in got.items():
        assert data["top1_n"] == N_IMAGES
        assert data["top1"] == host_top1(artefacts[name], eval_npz, data["top1_batch"]), name
    fp32 = got["onnx-fp32"]["top1"]
    assert fp32 > 0.9 and got["tflite-fp32"]["top1"] == pytest.approx(fp32, abs=0.01)
    for name in ("onnx-fp32", "onnx-int8"):
        assert got[name]["runtime_settings"]["graph_optimization_level"] == "enable_all"
    for name in ("onnx-w8a16", "onnx-w16a16"):  # 16-bit activations: the agent applied the file's disable_all
        settings = got[name]["runtime_settings"]
        assert settings["graph_optimization_level"] == "disable_all"
        assert settings["graph_optimization_source"] == "model metadata"
        assert got[name]["artifact_metadata"][GRAPH_OPTIMIZATION_KEY] == "disable_all"
        assert abs(got[name]["top1"] - fp32) <= 0.01, name
    for name in ("onnx-int8", "tflite-int8"):
        assert abs(got[name]["top1"] - fp32) <= 0.02, name
    record = (tmp_path / "bench.jsonl").read_text().splitlines()[names.index("onnx-w16a16")]
    assert '"graph_optimization_level": "disable_all"' in record  # the JSON result records the settings


def test_without_the_setting_the_w16a16_bench_fails(artefacts: dict[str, Path], eval_npz: Path, tmp_path: Path) -> None:
    model = onnx.load(str(artefacts["onnx-w16a16"]))
    for prop in model.metadata_props:
        if prop.key == GRAPH_OPTIMIZATION_KEY:
            prop.value = "enable_all"
    flipped = tmp_path / "w16a16-optimized.onnx"
    onnx.save(model, str(flipped))
    data = bench(flipped, "local", runs=1, warmup=0, threads=THREADS, inputs=eval_npz).results[0].data
    assert data["runtime_settings"]["graph_optimization_level"] == "enable_all"
    reference = bench(artefacts["onnx-fp32"], "local", runs=1, warmup=0, threads=THREADS, inputs=eval_npz)
    assert data["top1"] < reference.results[0].data["top1"] - 0.3  # ONNX Runtime 1.32 miscomputes it optimised
