"""Fixtures of the quantization tests: quantized reference models shared across tests (session scope)."""

from __future__ import annotations

import pytest
import torch

from edgeslim.data import calibration_subset, evaluate, fashion_mnist_loader
from edgeslim.plugin.quantization import QuantResult, quantize

X = torch.zeros(2, 3, 32, 32)


@pytest.fixture(scope="session")
def calib_256() -> torch.utils.data.DataLoader:
    """256 seeded training images, batch 64."""
    return calibration_subset("train", 256)


@pytest.fixture(scope="session")
def int8_resnet(resnet18_fmnist: torch.nn.Module, calib_256: torch.utils.data.DataLoader) -> QuantResult:
    """ResNet-18 W8A8 PTQ."""
    return quantize(resnet18_fmnist, X, "int8", calibration=calib_256)


@pytest.fixture(scope="session")
def log2_mbv2(mobilenet_v2_fmnist: torch.nn.Module, calib_256: torch.utils.data.DataLoader) -> QuantResult:
    """MobileNetV2 with 4-bit log2 weights, int8 activations (PTQ)."""
    return quantize(mobilenet_v2_fmnist, X, "log2:4", calibration=calib_256)


@pytest.fixture(scope="session")
def test_images() -> torch.Tensor:
    """Seven real test images (an odd batch size, to exercise the dynamic batch dimension)."""
    return next(iter(fashion_mnist_loader("test", limit=7, batch_size=7)))[0]


@pytest.fixture(scope="session")
def fp_top1_resnet_1k(resnet18_fmnist: torch.nn.Module, test_loader_1k: torch.utils.data.DataLoader) -> float:
    """fp32 top-1 of the reference ResNet-18 on the first 1,000 test images."""
    return evaluate(resnet18_fmnist, test_loader_1k)
