"""A model with dynamic height/width is timed at the size it was exported for, never at a guessed 1x1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeslim import bench, export
from edgeslim.device_bench.errors import DeviceError


class PoolNet(torch.nn.Module):
    """Conv + global pooling: runs at any input size, so an ONNX export can keep H and W dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_edgeslim_onnx_with_dynamic_hw_is_timed_at_its_export_size(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    res = export(PoolNet().eval(), "onnx", path, torch.randn(1, 3, 48, 40), verify=False)
    assert res.metadata["dynamic_axes"].endswith("width")  # H and W really are dynamic in the file
    report = bench(path, runs=2, warmup=0)
    assert report.results[0].data["inputs"][0]["shape"] == [1, 3, 48, 40]


def test_dynamic_hw_without_a_recorded_shape_asks_for_inputs(tmp_path: Path) -> None:
    path = tmp_path / "plain.onnx"
    torch.onnx.export(PoolNet().eval(), (torch.randn(1, 3, 32, 32),), str(path), dynamo=True, external_data=False,
                      dynamic_shapes=({0: torch.export.Dim("b"), 2: torch.export.Dim("h", min=8, max=512),
                                       3: torch.export.Dim("w", min=8, max=512)},), verbose=False)
    with pytest.raises(DeviceError, match=r"dynamic dimensions .*pass inputs of the size to time"):
        bench(path, runs=2, warmup=0)
    x = tmp_path / "x.npz"
    np.savez(x, x=np.random.default_rng(0).standard_normal((1, 3, 64, 56)).astype(np.float32))
    report = bench(path, runs=2, warmup=0, inputs=x)
    assert report.results[0].data["inputs"][0]["shape"] == [1, 3, 64, 56]
