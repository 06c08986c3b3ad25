"""The CLI prints no known third-party noise (torchao's KernelPreference warning, litert-torch's progress)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.cli.conftest import last_json, run_cli

#: litert-torch's progress, its op count (C++), ai-edge-quantizer's report: shown only with ``export --verbose``.
CONVERTER_PROGRESS = ("[START] LiteRT-Torch Convert", "Estimated count of arithmetic ops", "Quantized model size")

NET_PY = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
"""


def test_quantize_and_tflite_export_print_no_torchao_or_litert_noise(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(NET_PY)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 255, (32, 16, 16, 3)).astype(np.uint8), y=np.arange(32) % 2,
             x_val=rng.integers(0, 255, (16, 16, 16, 3)).astype(np.uint8), y_val=np.arange(16) % 2)
    common = ["--model", f"{tmp_path / 'net.py'}:build", "--data", f"npz:{tmp_path / 'd.npz'}", "--input-size", "16"]
    proc = run_cli("quantize", *common, "--calib", "16", "--eval-samples", "16", "--out", str(tmp_path / "q"), "--json")
    assert last_json(proc)["scheme"] == "int8"
    assert "KernelPreference" not in proc.stderr and "W1207" not in proc.stderr, proc.stderr
    export = ["export", *common, "--format", "tflite", "--quant", "int8", "--verify-samples", "8", "--eval-samples", "16",
              "--max-drop", "100", "--json"]
    proc = run_cli(*export, "--out", str(tmp_path / "m.tflite"))  # litert-torch, then ai-edge-quantizer
    assert Path(last_json(proc)["path"]).is_file()
    for noise in (*CONVERTER_PROGRESS, "KernelPreference", "absl::InitializeLog", "oneDNN custom operations",
                  "XNNPACK delegate", "experimental_preserve_all_tensors"):
        assert noise not in proc.stderr, (noise, proc.stderr)


@pytest.mark.slow
def test_export_verbose_shows_the_converters_progress(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(NET_PY)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).integers(0, 255, (16, 16, 16, 3)).astype(np.uint8),
             y=np.arange(16) % 2)
    proc = run_cli("export", "--model", f"{tmp_path / 'net.py'}:build", "--data", f"npz:{tmp_path / 'd.npz'}",
                   "--input-size", "16", "--format", "tflite", "--quant", "int8", "--verify-samples", "8",
                   "--eval-samples", "16", "--max-drop", "100", "--out", str(tmp_path / "v.tflite"), "--json", "--verbose")
    assert last_json(proc)["path"] == str(tmp_path / "v.tflite")  # stdout still ends with the JSON line
    # litert-torch's and ai-edge-quantizer's own progress lines (the converter's C++ op count goes through absl
    # logging, whose level the environment may set: not asserted here, but absent without --verbose above)
    for progress in ("[START] LiteRT-Torch Convert", "Quantized model size"):
        assert progress in proc.stderr, (progress, proc.stderr)
    assert "experimental_preserve_all_tensors" not in proc.stderr and "KernelPreference" not in proc.stderr
