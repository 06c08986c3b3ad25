"""Shared fixtures. Sub-folders add their own conftest.py for part-specific fixtures."""

from __future__ import annotations

import pytest
import torch

from edgeslim.data import fashion_mnist_loader
from edgeslim.models import load


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def resnet18_fmnist() -> torch.nn.Module:
    """The trained reference ResNet-18 (do not modify it in a test: deepcopy first)."""
    return load("resnet18-fmnist")


@pytest.fixture(scope="session")
def mobilenet_v2_fmnist() -> torch.nn.Module:
    """The trained reference MobileNetV2 (do not modify it in a test: deepcopy first)."""
    return load("mobilenet_v2-fmnist")


@pytest.fixture(scope="session")
def test_loader_1k() -> torch.utils.data.DataLoader:
    """The first 1,000 Fashion-MNIST test images (real data), batch 250."""
    return fashion_mnist_loader("test", limit=1000, batch_size=250)


@pytest.fixture(scope="session")
def train_loader_small() -> torch.utils.data.DataLoader:
    """2,048 Fashion-MNIST training images, shuffled, batch 128."""
    return fashion_mnist_loader("train", limit=2048, batch_size=128)
