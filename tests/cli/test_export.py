"""``edgeslim export``: the contract (real ResNet-18, files run directly in ORT / ai-edge-litert)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeslim.data import fashion_mnist_loader

EDGESLIM = [sys.executable, "-m", "edgeslim.cli"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([*EDGESLIM, "export", *args], check=False, capture_output=True, text=True, env=env, timeout=600)


def _images(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    x, y = next(iter(fashion_mnist_loader("test", limit=n, batch_size=n)))
    return x.numpy(), y.numpy()


@pytest.mark.slow
def test_onnx_int8_contract(tmp_path: Path) -> None:
    import onnxruntime as ort

    out = tmp_path / "r18.onnx"
    proc = _cli("--model", "resnet18-fmnist", "--format", "onnx", "--quant", "int8", "--out", str(out), "--json",
                "--calibration-size", "128", "--verify-samples", "64")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["path"] == str(out) and summary["bytes"] == out.stat().st_size
    assert summary["format"] == "onnx" and summary["quant"] == "int8" and summary["layout"] == "nchw"
    assert summary["verification"]["passed"] and summary["dtypes"]["float_compute_ops"] == 0
    x, y = _images()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    acc = (sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(1) == y).mean()
    assert acc >= 0.9
    # no overwrite without --force
    again = _cli("--model", "resnet18-fmnist", "--format", "onnx", "--out", str(out), "--no-verify")
    assert again.returncode == 2 and "--force" in again.stderr


@pytest.mark.slow
def test_tflite_int8_contract(tmp_path: Path) -> None:
    import litert_torch  # noqa: F401  (tflite extra, installed in CI: missing, it fails, never skips)
    from ai_edge_litert.interpreter import Interpreter

    out = tmp_path / "r18.tflite"
    proc = _cli("--model", "resnet18-fmnist", "--format", "tflite", "--quant", "int8", "--out", str(out), "--json",
                "--calibration-size", "128", "--verify-samples", "64")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["format"] == "tflite" and summary["quant"] == "int8" and summary["input"]["dtype"] == "float32"
    assert summary["dtypes"]["float_compute_ops"] == 0 and summary["verification"]["passed"]
    it = Interpreter(model_path=str(out))
    it.allocate_tensors()
    inp, o = it.get_input_details()[0], it.get_output_details()[0]
    assert tuple(inp["shape"]) == (1, 3, 32, 32)
    x, y = _images(100)
    preds = []
    for i in range(len(x)):
        it.set_tensor(inp["index"], x[i : i + 1])
        it.invoke()
        preds.append(int(it.get_tensor(o["index"]).argmax()))
    assert (np.array(preds) == y).mean() >= 0.88


def test_corrupt_model_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"this is not a model")
    proc = _cli("--model", str(bad), "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert proc.returncode == 2
    assert "ModelLoadError" in proc.stderr and str(bad) in proc.stderr
    assert not (tmp_path / "m.onnx").exists()
