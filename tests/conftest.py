"""Shared fixtures and the parallel (pytest-xdist) setup. Sub-folders add their own conftest.py for part-specific fixtures.

The README's test command runs the suite on two xdist workers with ``--dist loadfile``: a file's tests run on one
worker, so its module-scoped fixtures (exported models, searches, trained nets) are built once. Not
``loadgroup``: with pytest 9.2 and xdist 3.8 its groups do nothing (xdist writes ``item._nodeid``, which pytest
9 no longer reads), so tests were spread one by one and module fixtures built on both workers. Each worker gets
its own ``$EDGESLIM_CACHE`` (host-side device locks, latency tables), its share of the cores as torch threads,
and files holding ``slow`` tests are handed out first. The emulated board (tests/device_bench) may run on both
workers at once: each board has its own keys, sshd config, subnet and namespace.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from edgeslim.data import fashion_mnist_loader
from edgeslim.models import load


def pytest_configure(config: pytest.Config) -> None:
    """On an xdist worker: split the cores among the workers and give the worker its own ``$EDGESLIM_CACHE``."""
    # the CLI subprocesses print at 400 columns unless a test asks for a width: a long temporary path (under
    # pytest-xdist's popen-gwN folders) is never wrapped inside a message a test reads
    os.environ.setdefault("COLUMNS", "400")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        if getattr(config.option, "dist", "no") == "loadfile":
            config.option.loadscopereorder = False  # keep the slow-first order of pytest_collection_modifyitems
        return
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    threads = max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # the CLI and example subprocesses
    shared = os.environ.get("EDGESLIM_CACHE") or str(Path.home() / ".cache" / "edgeslim")
    os.environ.setdefault("EDGESLIM_ROOTFS_CACHE", shared)  # the emulated board's rootfs is built once per machine
    cache = tempfile.mkdtemp(prefix=f"edgeslim-cache-{worker}-")
    os.environ["EDGESLIM_CACHE"] = cache
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker: the files that hold ``slow`` tests first (each keeps its order), so none ends the run."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return
    slow = {item.nodeid.split("::", 1)[0] for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.nodeid.split("::", 1)[0] not in slow)  # stable


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
