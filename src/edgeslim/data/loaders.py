"""DataLoaders (top-1 evaluation is :func:`edgeslim.train.evaluate`, re-exported here)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from edgeslim.data.fashion_mnist import FashionMNIST
from edgeslim.train.evaluate import evaluate  # the one top-1 evaluation, re-exported here


def fashion_mnist_loader(
    split: str = "test",
    *,
    batch_size: int = 256,
    limit: int | None = None,
    root: str | Path | None = None,
    augment: bool = False,
    shuffle: bool | None = None,
    seed: int = 0,
) -> DataLoader[tuple[torch.Tensor, int]]:
    """A DataLoader over Fashion-MNIST with the reference preprocessing.

    Args:
        split: ``"train"`` or ``"test"``.
        batch_size: Images per batch.
        limit: Keep only the first ``limit`` images (deterministic subset).
        root: Folder with the IDX files.
        augment: Flip + crop augmentation (training).
        shuffle: Shuffle each epoch; default True for ``train``.
        seed: Seed of the shuffling generator.

    Returns:
        A DataLoader yielding ``(images[N,3,32,32], labels[N])``.
    """
    ds = FashionMNIST(split, root=root, limit=limit, augment=augment)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=(split == "train") if shuffle is None else shuffle,
        generator=gen,
        num_workers=0,
    )


def calibration_subset(
    split: str = "train", n: int = 512, *, batch_size: int = 64, root: str | Path | None = None, seed: int = 0
) -> DataLoader[tuple[torch.Tensor, int]]:
    """A loader over ``n`` images drawn at random (seeded) from ``split``, for calibration."""
    ds = FashionMNIST(split, root=root)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return DataLoader(Subset(ds, idx), batch_size=batch_size, shuffle=False)


__all__ = ["calibration_subset", "evaluate", "fashion_mnist_loader"]
