"""The joint search's model space on depthwise convolutions (MobileNet-style blocks)."""

from __future__ import annotations

import torch
from torch import nn

from edgeslim.pipelines.joint_space import analyse
from edgeslim.plugin.pruning.api import prune
from edgeslim.plugin.pruning.config import PruneConfig
from edgeslim.plugin.pruning.structured import Plan

X = torch.randn(1, 3, 32, 32)


def _block(cin: int, cout: int, *, groups: int = 1, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups), nn.BatchNorm2d(cout), nn.ReLU6())


class _MobileNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _block(3, 32)
        self.dw = _block(32, 32, groups=32)  # no expansion: depthwise straight after the stem
        self.pw = _block(32, 64, k=1)
        self.exp = _block(64, 128, k=1)
        self.dw2 = _block(128, 128, groups=128, stride=2)
        self.proj = nn.Sequential(nn.Conv2d(128, 64, 1), nn.BatchNorm2d(64))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(self.dw(self.stem(x)))
        return self.head(self.proj(self.dw2(self.exp(y))).mean((2, 3)))


def test_depthwise_shapes_and_params_match_the_pruned_model() -> None:
    torch.manual_seed(0)
    model = _MobileNetish().eval()
    space = analyse(model, X, (64, 64), [0.5, 1.0], [8])
    widths = {g.name: g.channels // 2 for g in space.groups}
    pruned = prune(model, X, PruneConfig(target="params=0.5"), plan=Plan(0.0, dict.fromkeys(widths, 0.5))).model
    convs = {n: m for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    for layer in space.layers:
        cin, cout, groups = space.shape(layer, widths)
        real = convs[layer.name]
        if isinstance(real, nn.Conv2d):
            assert (cin, cout, groups) == (real.in_channels, real.out_channels, real.groups), layer.name
        else:
            assert (cin, cout) == (real.in_features, real.out_features), layer.name
    assert space.params(widths) == sum(p.numel() for p in pruned.parameters())
