"""The CLI prints no known third-party noise (torchao's KernelPreference warning, litert-torch's progress)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.cli.conftest import last_json, run_cli

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
    proc = run_cli("export", *common, "--format", "tflite", "--verify-samples", "8", "--eval-samples", "16",
                   "--max-drop", "100", "--out", str(tmp_path / "m.tflite"), "--json")
    assert Path(last_json(proc)["path"]).is_file()
    for noise in ("KernelPreference", "LiteRT-Torch Convert", "[START]", "absl::InitializeLog", "oneDNN custom operations",
                  "Estimated count of arithmetic ops"):
        assert noise not in proc.stderr, (noise, proc.stderr)
