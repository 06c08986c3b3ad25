from __future__ import annotations

import pytest
import torch
from torch import nn


class SmallNet(nn.Module):
    """A small residual CNN with BN: quick to trace, exercises residual coupling."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(self.stem(x))
        y = torch.relu(self.b(y) + y)
        return self.fc(y.mean((2, 3)))


@pytest.fixture
def small_net() -> nn.Module:
    torch.manual_seed(0)
    net = SmallNet()
    for m in net.modules():  # non-trivial BN scales so bn_scale differs from random
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.1, 1.0)
    return net.eval()


@pytest.fixture
def x32() -> torch.Tensor:
    return torch.randn(1, 3, 32, 32)
