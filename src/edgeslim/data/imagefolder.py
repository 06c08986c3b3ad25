"""``--data imagefolder:DIR``: torchvision ``ImageFolder`` over ``DIR/train/<class>/*`` and ``DIR/val/<class>/*``.

Images are read as RGB, resized to ``--input-size`` (H = W), scaled to [0, 1] and normalised
with ``--mean`` / ``--std`` when given. Class indices follow the sorted class-folder names, which
must be the same in ``train/`` and ``val/``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from edgeslim.data.sources import DataOptions, DatasetSource, normalize, register_data_source
from edgeslim.errors import DataError

SPLITS = ("train", "val")


class _Images(Dataset[tuple[torch.Tensor, int]]):
    """One split: an ``ImageFolder`` whose unreadable files raise a ``DataError`` naming them."""

    def __init__(self, folder: Path, options: DataOptions) -> None:
        from torchvision.datasets import ImageFolder

        try:
            self.folder = ImageFolder(str(folder))
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"{folder}: {exc} (expected {folder}/<class>/<image>.png|jpg ...)") from None
        self.options = options

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        import numpy as np

        path, label = self.folder.samples[index]
        try:
            image = self.folder.loader(path)
        except Exception as exc:
            raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}; remove or replace it") from exc
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
        return normalize(x.unsqueeze(0), self.options)[0], int(label)


class ImageFolderSource(DatasetSource):
    """See the module docstring."""

    def __init__(self, root: Path, options: DataOptions) -> None:
        self.root, self.options = root, options
        self.name = f"imagefolder:{root}"
        self.eval_name = f"imagefolder:{root}/val"
        self.where = str(root)
        self._sets: tuple[_Images, _Images] | None = None

    def datasets(self) -> tuple[_Images, _Images]:
        """``(train, val)``; checks the folders and their classes the first time."""
        if self._sets is None:
            if not self.root.is_dir():
                raise DataError(
                    f"image folder {self.root} does not exist (expected {self.root}/train/<class>/... "
                    f"and {self.root}/val/<class>/...)"
                )
            for split in SPLITS:
                if not (self.root / split).is_dir():
                    raise DataError(
                        f"{self.root} has no {split}/ folder: imagefolder:DIR needs DIR/train/<class>/* "
                        "and DIR/val/<class>/*"
                    )
            train, val = (_Images(self.root / split, self.options) for split in SPLITS)
            if train.folder.classes != val.folder.classes:
                only_train = sorted(set(train.folder.classes) - set(val.folder.classes))
                only_val = sorted(set(val.folder.classes) - set(train.folder.classes))
                raise DataError(
                    f"{self.root}: the class folders of train/ and val/ differ (only in train/: "
                    f"{', '.join(only_train) or 'none'}; only in val/: {', '.join(only_val) or 'none'}): labels would "
                    "not mean the same class; give both splits the same class folders"
                )
            self._sets = (train, val)
        return self._sets

    def labels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels of both splits (from the folder names; no image is read)."""
        train, val = self.datasets()
        return (
            torch.tensor(train.folder.targets, dtype=torch.int64),
            torch.tensor(val.folder.targets, dtype=torch.int64),
        )

    def check(self) -> None:
        """Folders, classes, and the first image of each split readable."""
        for ds in self.datasets():
            ds[0]


@register_data_source("imagefolder")
def imagefolder_source(arg: str, options: DataOptions) -> ImageFolderSource:
    """``imagefolder:DIR``."""
    if not arg:
        raise DataError("--data imagefolder:DIR needs the folder holding train/ and val/")
    return ImageFolderSource(Path(arg).expanduser().resolve(), options)
