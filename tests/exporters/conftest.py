"""Fixtures of the exporter tests: a small residual CNN trained for a few seconds on real data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeslim.data import fashion_mnist_loader


class Block(nn.Module):
    """conv-bn-relu-conv-bn + identity, relu (a ResNet basic block)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    """A 30 k-parameter residual CNN with the reference models' op mix (conv, bn, relu, add, pool, fc)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(Block(16), Block(16))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.down(self.layer1(self.stem(x)))), 1))


@pytest.fixture(scope="session")
def tiny_model() -> nn.Module:
    """TinyResNet trained for one pass over 4,096 real training images (~80 % top-1), eval mode."""
    torch.manual_seed(0)
    model = TinyResNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for x, y in fashion_mnist_loader("train", limit=4096, batch_size=128, seed=0):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def real_images() -> torch.Tensor:
    """The first 128 Fashion-MNIST test images, preprocessed, NCHW."""
    return next(iter(fashion_mnist_loader("test", limit=128, batch_size=128)))[0]


@pytest.fixture()
def example() -> torch.Tensor:
    """An example input of batch 1 (fixed batch of TFLite artefacts)."""
    return torch.randn(1, 3, 32, 32)


@pytest.fixture
def int8_litert(tmp_path):  # type: ignore[no-untyped-def]
    """``build(model, x) -> (Interpreter, QuantResult)``: ``edgeslim.quantize`` int8 on 4 random batches shaped
    like ``x``, exported to TFLite (the quantized file as it is) and loaded in LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    import edgeslim
    from edgeslim.exporters import export

    def build(model: nn.Module, x: torch.Tensor):  # type: ignore[no-untyped-def]
        calib = [(torch.randn(8, *x.shape[1:]), torch.zeros(8, dtype=torch.long)) for _ in range(4)]
        q = edgeslim.quantize(model, x, "int8", calibration=calib)
        out = tmp_path / "q.tflite"
        export(q, "tflite", out, x, verify=False)
        interp = Interpreter(model_path=str(out))
        interp.allocate_tensors()
        return interp, q

    return build


def u8s8_overflows() -> bool:
    """x86 without VNNI: ONNX Runtime's U8S8 kernels add u8·s8 pairs in int16 (``vpmaddubsw``)."""
    from edgeslim.exporters.onnx import x86_u8s8_overflows

    return x86_u8s8_overflows()
