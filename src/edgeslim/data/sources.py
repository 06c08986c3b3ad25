"""Data sources by name: ``--data fashion-mnist | imagefolder:DIR | npz:FILE | python:module:function``.

A data source gives the loaders every data-driven step needs — a training loader (fine-tune,
QAT, data-driven criteria, sensitivity), a seeded calibration subset, and a labelled evaluation
loader — each yielding ``(images[N,C,H,W] float32, labels[N] int64)``. Each kind is one module
that registers a factory ``(argument, DataOptions) -> DataSource`` with
``@register_data_source("kind")``; :func:`open_data` parses the spec and looks the kind up.
Third parties register the same way (or through the ``edgeslim.plugins`` entry points).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from edgeslim.errors import DataError, RegistryError
from edgeslim.registry import Registry

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class DataOptions:
    """Options shared by the data sources.

    Attributes:
        input_size: Resolution (H = W) images are resized to (ImageFolder, npz); ``None``: as stored.
        mean: Per-channel mean subtracted from images read as [0, 1] (ImageFolder, uint8 npz).
        std: Per-channel standard deviation they are divided by.
        root: Fashion-MNIST's IDX folder (``--data-dir``).
    """

    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    root: Path | None = None


class DataSource(Protocol):
    """Labelled images for the data-driven steps (see the module docstring).

    Attributes:
        name: The spec with absolute paths (``imagefolder:/abs/dir``), as recorded in results.
        eval_name: The evaluation set in lineage top-1 keys (``fashion-mnist/test``, ``.../val``).
    """

    name: str
    eval_name: str

    def check(self) -> None:
        """Fail (``DataError`` naming the file) when the data is missing, unreadable, empty or inconsistent."""
        ...

    def check_labels(self, num_outputs: int) -> None:
        """Fail (``DataError`` naming the file) when a label is outside ``[0, num_outputs)``."""
        ...

    def channels(self) -> int:
        """Channels of the images (C of NCHW)."""
        ...

    def train_loader(self, batch_size: int, *, augment: bool = False, shuffle: bool = True, seed: int = 0) -> Any:
        """The training images (shuffled with a seeded generator)."""
        ...

    def eval_loader(self, batch_size: int, *, limit: int | None = None) -> Any:
        """The first ``limit`` evaluation images (all with ``None``), in order."""
        ...

    def calibration(self, n: int, *, batch_size: int = 64, seed: int = 0) -> Any:
        """``n`` training images drawn at random (seeded), for calibration."""
        ...


#: ``kind`` -> factory ``(argument, options) -> DataSource``.
DATA_SOURCES: Registry[Callable[[str, DataOptions], DataSource]] = Registry("data source")


def register_data_source(
    name: str,
) -> Callable[[Callable[[str, DataOptions], DataSource]], Callable[[str, DataOptions], DataSource]]:
    """Register a data-source factory under ``name`` (``--data NAME:ARGUMENT``); returns it unchanged."""
    return DATA_SOURCES.register(name)


def open_data(spec: str, options: DataOptions | None = None, *, check: bool = True) -> DataSource:
    """The data source named by ``spec`` (``kind`` or ``kind:argument``), checked unless ``check=False``.

    Raises:
        DataError: Unknown kind (the known ones are listed), or the data fails its check.
    """
    kind, _, arg = spec.strip().partition(":")
    try:
        factory = DATA_SOURCES.get(kind)
    except RegistryError as exc:
        raise DataError(
            f"{exc} (spellings: fashion-mnist, imagefolder:DIR, npz:FILE, python:module:function)"
        ) from None
    source = factory(arg, options or DataOptions())
    if check:
        source.check()
    return source


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    """``"0.485,0.456,0.406"`` -> a tuple (``None`` for ``None``/empty).

    Raises:
        DataError: Not comma-separated numbers, or a non-positive ``--std``.
    """
    if text is None or not text.strip():
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise DataError(
            f"{what} must be comma-separated numbers (one per channel, or one for all), got {text!r}"
        ) from None
    if what == "--std" and any(v <= 0 for v in values):
        raise DataError(f"--std values must be positive, got {text!r}")
    return values


def normalize(x: torch.Tensor, options: DataOptions) -> torch.Tensor:
    """Resize an NCHW float batch in [0, 1] to ``options.input_size`` and apply ``mean``/``std``."""
    if options.input_size is not None and tuple(x.shape[-2:]) != (options.input_size, options.input_size):
        size = (options.input_size, options.input_size)
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    channels = x.shape[1]
    for values, what in ((options.mean, "--mean"), (options.std, "--std")):
        if values is not None and len(values) not in (1, channels):
            raise DataError(
                f"{what} has {len(values)} values but the images have {channels} channels: give 1 or {channels}"
            )
    if options.mean is not None:
        x = x - torch.tensor(options.mean, dtype=x.dtype).view(1, -1, 1, 1)
    if options.std is not None:
        x = x / torch.tensor(options.std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.contiguous()


def out_of_range(labels: torch.Tensor, num_outputs: int) -> str | None:
    """A description of the labels outside ``[0, num_outputs)`` (``None`` when all fit)."""
    if labels.numel() == 0:
        return None
    lo, hi = int(labels.min()), int(labels.max())
    if lo >= 0 and hi < num_outputs:
        return None
    return f"labels range over [{lo}, {hi}] but the model has {num_outputs} outputs (classes 0..{num_outputs - 1})"


class DatasetSource:
    """A data source over two map-style datasets (training and evaluation): loaders built once here.

    Subclasses set :attr:`name`, :attr:`eval_name` and implement :meth:`datasets` and
    :meth:`labels` (their files are read lazily, on the first call).
    """

    name = ""
    eval_name = ""
    #: The file or folder named in error messages.
    where = ""

    def datasets(self) -> tuple[Dataset[Any], Dataset[Any]]:
        """``(train, eval)`` datasets of ``(image, label)`` items."""
        raise NotImplementedError

    def train_dataset(self, augment: bool) -> Dataset[Any]:
        """The training dataset (random horizontal flips when ``augment``)."""
        train = self.datasets()[0]
        return Flipped(train) if augment else train

    def labels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All training and evaluation labels."""
        raise NotImplementedError

    def check(self) -> None:
        """Read the data once (subclasses check their own layout)."""
        self.datasets()

    def channels(self) -> int:
        """See :class:`DataSource` (from the first training image)."""
        return int(self.datasets()[0][0][0].shape[0])

    def check_labels(self, num_outputs: int) -> None:
        """See :class:`DataSource`."""
        for split, labels in zip(("training", "evaluation"), self.labels(), strict=True):
            problem = out_of_range(labels, num_outputs)
            if problem:
                raise DataError(
                    f"{self.where}: {split} {problem}; give the model as many outputs as classes, or fix the labels"
                )

    def train_loader(self, batch_size: int, *, augment: bool = False, shuffle: bool = True, seed: int = 0) -> Any:
        """See :class:`DataSource`."""
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(self.train_dataset(augment), batch_size=batch_size, shuffle=shuffle, generator=gen)

    def eval_loader(self, batch_size: int, *, limit: int | None = None) -> Any:
        """See :class:`DataSource`."""
        ds = self.datasets()[1]
        if limit is not None and limit < len(ds):  # type: ignore[arg-type]
            ds = Subset(ds, range(limit))
        return DataLoader(ds, batch_size=batch_size, shuffle=False)

    def calibration(self, n: int, *, batch_size: int = 64, seed: int = 0) -> Any:
        """See :class:`DataSource`."""
        ds = self.datasets()[0]
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].tolist()  # type: ignore[arg-type]
        return DataLoader(Subset(ds, idx), batch_size=batch_size, shuffle=False)


class Flipped(Dataset[tuple[torch.Tensor, int]]):
    """Random horizontal flips of a dataset's images (training augmentation)."""

    def __init__(self, base: Dataset[Any]) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.base[index]
        return (x.flip(-1) if torch.rand(()) < 0.5 else x), y


class Limited:
    """The first ``limit`` images of a loader of ``(x, y)`` batches (the last batch cut)."""

    def __init__(self, loader: Iterable[Batch], limit: int | None) -> None:
        self.loader, self.limit = loader, limit

    def __iter__(self) -> Iterator[Batch]:
        seen = 0
        for x, y in self.loader:
            if self.limit is not None and seen >= self.limit:
                return
            keep = len(y) if self.limit is None else min(len(y), self.limit - seen)
            seen += keep
            yield x[:keep], y[:keep]


__all__ = [
    "DATA_SOURCES",
    "DataOptions",
    "DataSource",
    "DatasetSource",
    "Flipped",
    "Limited",
    "normalize",
    "open_data",
    "out_of_range",
    "parse_floats",
    "register_data_source",
]
