"""Same-size resizes (timm's ``dynamic_img_size`` position embeddings) convert to TFLite; other resizes are untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import edgeslim
from edgeslim.exporters.errors import UnsupportedOpError
from edgeslim.exporters.tflite_decomp import RESIZE_OPS, same_size_resize_is_identity


class PosResample(nn.Module):
    """Adds a 4x4 position map resampled (bicubic, antialias) to the feature map's size on every forward."""

    def __init__(self, grid: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 8, grid, grid))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = y + F.interpolate(self.pos, size=y.shape[-2:], mode="bicubic", antialias=True, align_corners=False)
        return self.head(y.mean((2, 3)))


def test_same_size_antialiased_resize_converts_and_verifies(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = PosResample().eval()
    ops = {n.target for n in torch.export.export(net, (torch.randn(1, 3, 16, 16),)).graph.nodes}
    assert torch.ops.aten._upsample_bicubic2d_aa.vec in ops or torch.ops.aten._upsample_bicubic2d_aa.default in ops
    out = edgeslim.export(net, "tflite", tmp_path / "m.tflite", torch.randn(1, 3, 16, 16),
                          verify_inputs=[torch.randn(4, 3, 16, 16)])
    assert out.verification is not None and out.verification.passed
    assert out.verification.max_abs_error < 1e-4


def test_a_real_antialiased_resize_still_names_the_op(tmp_path: Path) -> None:
    net = PosResample(grid=3).eval()  # 3x3 -> 4x4: a real resize, which litert-torch cannot lower
    with pytest.raises(UnsupportedOpError, match=r"upsample_bicubic2d_aa"):
        edgeslim.export(net, "tflite", tmp_path / "m.tflite", torch.randn(1, 3, 16, 16))
    assert not (tmp_path / "m.tflite").exists()


def test_the_decomposition_tables_are_restored() -> None:
    from litert_torch.fx_infra import decomp

    before = [{op: t.get(op) for op in RESIZE_OPS} for t in (decomp._pre_convert_decomp, decomp._pre_lower_decomp)]
    with same_size_resize_is_identity():
        assert all(decomp._pre_convert_decomp[op] is not before[0][op] for op in RESIZE_OPS)
    after = [{op: t.get(op) for op in RESIZE_OPS} for t in (decomp._pre_convert_decomp, decomp._pre_lower_decomp)]
    assert after == before
