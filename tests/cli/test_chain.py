"""The artefact chain through the real CLI: quantize → saved file → export, each step from the previous file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeslim.data import fashion_mnist_loader
from tests.cli.conftest import last_json, run_cli

EVAL = "400"


def _ort_top1(path: Path, n: int = 400) -> float:
    import onnxruntime as ort

    x, y = next(iter(fashion_mnist_loader("test", limit=n, batch_size=n)))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0].argmax(1) == y.numpy()).mean())


@pytest.mark.slow
def test_int8_file_is_small_and_exports_as_itself_to_onnx_and_tflite(tmp_path: Path) -> None:
    q = tmp_path / "Q"
    s = last_json(run_cli("quantize", "--model", "resnet18-fmnist", "--scheme", "int8", "--calib", "256",
                          "--eval-samples", EVAL, "--out", str(q), "--json"))
    model_pt = q / "model.pt"
    assert model_pt.stat().st_size <= 14_000_000 and s["model_bytes"] == model_pt.stat().st_size
    header = torch.load(model_pt, map_location="cpu", weights_only=True)
    steps = header["meta"]["lineage"]
    assert [st["step"] for st in steps] == ["float", "quantize"] and steps[0]["source"] == "resnet18-fmnist"
    key = f"fashion-mnist/test[:{EVAL}]@32x32"
    assert 0.9 < steps[0]["top1"][key] <= 1.0 and abs(steps[1]["top1"][key] - steps[0]["top1"][key]) < 0.02

    onnx_out = tmp_path / "F.onnx"
    e = last_json(run_cli("export", "--model", str(model_pt), "--format", "onnx", "--out", str(onnx_out),
                          "--eval-samples", EVAL, "--json"))
    assert e["quant"] == "int8" and e["accuracy"]["float_source"] == "lineage"
    assert e["top1_float"] == steps[0]["top1"][key]
    assert 0.9 < e["top1_artefact"] <= 1.0 and abs(e["top1_artefact"] - e["top1_float"]) <= 0.01
    assert e["top1_artefact"] == pytest.approx(_ort_top1(onnx_out), abs=1e-9)  # the number is the file's, in ORT
    assert e["dtypes"]["float_compute_ops"] == 0

    tfl = tmp_path / "F.tflite"
    t = last_json(run_cli("export", "--model", str(model_pt), "--format", "tflite", "--out", str(tfl),
                          "--eval-samples", EVAL, "--json"))
    assert t["bytes"] == tfl.stat().st_size < 12_500_000  # int8 weights, not the 44.7 MB float ones
    assert set(t["dtypes"]["compute_dtypes"]) <= {"int8", "float32"} and t["dtypes"]["compute_dtypes"]["int8"] >= 20
    assert abs(t["top1_artefact"] - e["top1_artefact"]) <= 0.01


@pytest.mark.slow
def test_codebook4_file_exports_to_a_small_onnx(tmp_path: Path) -> None:
    q = tmp_path / "Q4"
    s = last_json(run_cli("quantize", "--model", "resnet18-fmnist", "--scheme", "codebook:4", "--calib", "256",
                          "--eval-samples", EVAL, "--out", str(q), "--json"))
    assert (q / "model.pt").stat().st_size <= 1.15 * (s["weight_bytes"] + 200_000)  # packed 4-bit codes
    out = tmp_path / "F4.onnx"
    e = last_json(run_cli("export", "--model", str(q / "model.pt"), "--format", "onnx", "--out", str(out),
                          "--eval-samples", EVAL, "--json"))
    assert e["quant"] == "codebook:4" and e["metadata"]["coded"]["lowered"] >= 20
    assert out.stat().st_size <= 6_500_000
    assert e["top1_artefact"] == pytest.approx(_ort_top1(out), abs=1e-9) and e["accuracy"]["passed"]


@pytest.mark.slow
def test_an_export_that_loses_accuracy_fails_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "G.onnx"
    proc = run_cli("export", "--model", "resnet18-fmnist", "--format", "onnx", "--quant", "log2:2", "--out", str(out),
                   "--eval-samples", EVAL, "--json", check=False)
    assert proc.returncode == 2
    text = " ".join(proc.stderr.split())
    assert "ExportAccuracyError" in text and "loses" in text and "pt of top-1 accuracy" in text and "--max-drop" in text
    assert not out.exists() and not list(tmp_path.glob(".G.onnx*"))  # no temporary left either


def test_a_quantized_file_cannot_be_exported_as_another_precision(tmp_path: Path) -> None:
    import edgeslim
    from edgeslim.data import calibration_subset

    model = edgeslim.load_model("resnet18-fmnist")
    res = edgeslim.quantize(model, torch.zeros(2, 3, 32, 32), "int8", calibration=calibration_subset("train", 32))
    path = edgeslim.save(res, tmp_path / "q.pt")
    proc = run_cli("export", "--model", str(path), "--format", "onnx", "--quant", "w8a16", "--out",
                   str(tmp_path / "x.onnx"), check=False)
    assert proc.returncode == 2
    assert "already quantized as int8" in " ".join(proc.stderr.split())
    assert not (tmp_path / "x.onnx").exists()
    assert np.isfinite(res.weight_bytes)
