"""A pad with -inf before a max pool (timm's MaxPool2dSame; ViT-hybrid, ResNetV2 "same" stems) quantizes:
the pad reads the int8 input, the max pool writes at that scale, the pair runs in float between them.
Before, the pad's output (holding -inf) was observed and calibration stopped with a CalibrationError."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.plugin.quantization import quantize

QUANT = "quantized_decomposed.quantize_per_tensor.default"
DEQUANT = "quantized_decomposed.dequantize_per_tensor.default"


class _SamePool(nn.Module):
    """conv → asymmetric -inf pad → max pool → conv → mean → linear (written by hand)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3)
        self.c2 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pad(self.c1(x), (0, 1, 0, 1), value=-float("inf"))
        y = F.max_pool2d(y, 3, 2)
        return self.fc(self.c2(y).mean((2, 3)))


def _sqnr(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - got).pow(2).sum()))


def test_minus_inf_pad_before_max_pool() -> None:
    torch.manual_seed(0)
    net, x = _SamePool().eval(), torch.randn(8, 3, 15, 15)
    r = quantize(net, x[:1], "int8", calibration=[x])
    nodes = {n.target: n for n in r.model.graph.nodes if n.op == "call_function"}
    pad, pool = nodes[torch.ops.aten.pad.default], nodes[torch.ops.aten.max_pool2d.default]
    assert pad.args[1:] == ([0, 1, 0, 1], "constant", float("-inf")) and pool.args[0] is pad
    assert str(pad.args[0].target) == DEQUANT  # int8 in ...
    (q,) = pool.users
    assert str(q.target) == QUANT and q.args[1:3] == pad.args[0].args[1:3]  # ... int8 out at the same scale
    assert _sqnr(net(x), r.model(x)) > 25.0


def test_timm_max_pool_same() -> None:
    """timm's own MaxPool2dSame (not written for it) after a StdConv2dSame stem."""
    from timm.layers import StdConv2dSame
    from timm.layers.pool2d_same import MaxPool2dSame

    torch.manual_seed(0)
    net = nn.Sequential(StdConv2dSame(3, 8, 7, stride=2), nn.ReLU(), MaxPool2dSame(3, 2), nn.Conv2d(8, 8, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    x = torch.randn(8, 3, 32, 32)
    r = quantize(net, x[:1], "int8", calibration=[x])
    assert _sqnr(net(x), r.model(x)) > 25.0
