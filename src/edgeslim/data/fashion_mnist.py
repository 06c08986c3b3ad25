"""Fashion-MNIST from the IDX files of Debian's ``dataset-fashion-mnist`` package.

Preprocessing is the one the reference checkpoints were trained with (see
``models/README``): pixels / 255, zero-padded by 2 px to 32x32, the channel replicated to 3,
then ``(x - 0.2860) / 0.3530``.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import torch
from torch.utils.data import Dataset

from edgeslim.errors import DataError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ROOT_ENV = "EDGESLIM_FASHION_MNIST"
MEAN = 0.2860
STD = 0.3530
NUM_CLASSES = 10
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MISSING_HINT = (
    "install Debian's package with `apt-get install -y dataset-fashion-mnist`, or point "
    f"${ROOT_ENV} / --data-dir at a folder holding the four IDX files"
)


def default_root() -> Path:
    """The data folder: ``$EDGESLIM_FASHION_MNIST`` if set, else Debian's install location."""
    env = os.environ.get(ROOT_ENV)
    return Path(env) if env else DEFAULT_ROOT


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"Fashion-MNIST file {stem}[.gz] not found in {root}: {_MISSING_HINT}")


def _read_idx(path: Path, expected_magic: int) -> torch.Tensor:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read Fashion-MNIST file {path}: {exc}; {_MISSING_HINT}") from exc
    if len(raw) < 8:
        raise DataError(f"{path} is not an IDX file (only {len(raw)} bytes); {_MISSING_HINT}")
    magic, count = struct.unpack(">II", raw[:8])
    if magic != expected_magic:
        raise DataError(f"{path} has IDX magic {magic:#x}, expected {expected_magic:#x}: wrong or corrupt file")
    header = 16 if expected_magic == 2051 else 8
    dims = (count, 28, 28) if expected_magic == 2051 else (count,)
    expected = header + count * (784 if expected_magic == 2051 else 1)
    if len(raw) != expected:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, expected {expected}")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)


def check_root(root: str | Path | None = None) -> Path:
    """Return the data folder after checking that all four IDX files exist.

    Raises:
        DataError: A file is missing; the message names the Debian package to install.
    """
    base = Path(root) if root is not None else default_root()
    if not base.is_dir():
        raise DataError(f"Fashion-MNIST folder {base} does not exist: {_MISSING_HINT}")
    for stems in _FILES.values():
        for stem in stems:
            _find(base, stem)
    return base


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """Turn uint8 ``(N, 28, 28)`` images into normalised float ``(N, 3, 32, 32)`` inputs."""
    x = images.to(torch.float32).div_(255.0)
    x = torch.nn.functional.pad(x, (2, 2, 2, 2))
    x = (x - MEAN) / STD
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


class FashionMNIST(Dataset[tuple[torch.Tensor, int]]):
    """Fashion-MNIST with the reference preprocessing.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        root: Folder with the IDX files; default :func:`default_root`.
        limit: Keep only the first ``limit`` images.
        augment: Random horizontal flip and 4-px random crop (for fine-tuning).
    """

    def __init__(
        self,
        split: str = "test",
        root: str | Path | None = None,
        limit: int | None = None,
        augment: bool = False,
    ) -> None:
        if split not in _FILES:
            raise DataError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
        base = check_root(root)
        img_stem, lbl_stem = _FILES[split]
        images = _read_idx(_find(base, img_stem), 2051)
        labels = _read_idx(_find(base, lbl_stem), 2049)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        # one channel kept; expanded to 3 per item (a view) to save memory
        self.images = preprocess(images)[:, :1].contiguous()
        self.labels = labels.to(torch.int64)
        self.augment = augment
        self.split = split

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index]
        if self.augment:
            x = _augment(x)
        return x.expand(3, -1, -1), int(self.labels[index])


def _augment(x: torch.Tensor) -> torch.Tensor:
    if torch.rand(()) < 0.5:
        x = x.flip(-1)
    fill = -MEAN / STD  # a black pixel after normalisation
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), value=fill)
    i, j = (int(v) for v in torch.randint(0, 9, (2,)))
    return padded[:, i : i + 32, j : j + 32]
