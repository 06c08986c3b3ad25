import gzip
from pathlib import Path

import pytest
import torch

from edgeslim.data import FashionMNIST, check_root, evaluate, fashion_mnist_loader, preprocess
from edgeslim.errors import DataError


def test_reference_preprocessing() -> None:
    img = torch.zeros(1, 28, 28, dtype=torch.uint8)
    img[0, 0, 0] = 255
    x = preprocess(img)
    assert x.shape == (1, 3, 32, 32)
    assert torch.allclose(x[0, :, 0, 0], torch.full((3,), (0 - 0.2860) / 0.3530))  # padding
    assert torch.allclose(x[0, :, 2, 2], torch.full((3,), (1 - 0.2860) / 0.3530))  # first pixel after 2-px pad


def test_test_split_shape_and_labels() -> None:
    ds = FashionMNIST("test")
    assert len(ds) == 10_000
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    assert torch.bincount(ds.labels).tolist() == [1000] * 10


def test_missing_dir_names_debian_package(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        check_root(tmp_path / "nope")
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        fashion_mnist_loader("test", root=tmp_path)


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(b"\x00" * 16))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="t10k-images"):
        FashionMNIST("test", root=tmp_path)


def test_evaluate_reference_model(resnet18_fmnist: torch.nn.Module, test_loader_1k) -> None:
    acc = evaluate(resnet18_fmnist, test_loader_1k)
    assert 0.90 <= acc <= 0.96  # 92.58 % on all 10k; first 1k close to it


def test_augment_keeps_shape_and_changes_pixels() -> None:
    ds = FashionMNIST("train", limit=64, augment=True)
    torch.manual_seed(1)
    xs = torch.stack([ds[i][0] for i in range(64)])
    plain = FashionMNIST("train", limit=64).images.expand(-1, 3, -1, -1)
    assert xs.shape == plain.shape and not torch.equal(xs, plain)
