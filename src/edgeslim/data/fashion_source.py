"""``--data fashion-mnist`` (the default): Debian's Fashion-MNIST with the reference preprocessing.

Images are 3x32x32 as the reference checkpoints were trained (``--input-size``, ``--mean`` and
``--std`` do not apply); ``--data-dir`` / ``$EDGESLIM_FASHION_MNIST`` point at the IDX files.
"""

from __future__ import annotations

from typing import Any

from edgeslim.data.fashion_mnist import NUM_CLASSES, check_root
from edgeslim.data.loaders import calibration_subset, fashion_mnist_loader
from edgeslim.data.sources import DataOptions, register_data_source
from edgeslim.errors import DataError


class FashionSource:
    """Fashion-MNIST: training = the 60,000 train images, evaluation = the 10,000 test images."""

    name = "fashion-mnist"
    eval_name = "fashion-mnist/test"

    def __init__(self, options: DataOptions) -> None:
        self.root = options.root

    def check(self) -> None:
        """See :class:`~edgeslim.data.sources.DataSource` (the four IDX files exist)."""
        check_root(self.root)

    def check_labels(self, num_outputs: int) -> None:
        """See :class:`~edgeslim.data.sources.DataSource`."""
        if num_outputs < NUM_CLASSES:
            raise DataError(
                f"Fashion-MNIST has {NUM_CLASSES} classes but the model has {num_outputs} outputs: "
                "use a model with 10 outputs or your own data (--data)"
            )

    def channels(self) -> int:
        """3 (the grayscale channel replicated, as the reference models were trained)."""
        return 3

    def train_loader(self, batch_size: int, *, augment: bool = False, shuffle: bool = True, seed: int = 0) -> Any:
        """See :class:`~edgeslim.data.sources.DataSource`."""
        return fashion_mnist_loader(
            "train", batch_size=batch_size, root=self.root, augment=augment, shuffle=shuffle, seed=seed
        )

    def eval_loader(self, batch_size: int, *, limit: int | None = None) -> Any:
        """See :class:`~edgeslim.data.sources.DataSource`."""
        return fashion_mnist_loader("test", batch_size=batch_size, root=self.root, limit=limit)

    def calibration(self, n: int, *, batch_size: int = 64, seed: int = 0) -> Any:
        """See :class:`~edgeslim.data.sources.DataSource`."""
        return calibration_subset("train", n, batch_size=batch_size, root=self.root, seed=seed)


@register_data_source("fashion-mnist")
def fashion_mnist_source(arg: str, options: DataOptions) -> FashionSource:
    """``fashion-mnist`` (no argument)."""
    if arg:
        raise DataError(f"--data fashion-mnist takes no argument (got {arg!r}); its folder is --data-dir")
    return FashionSource(options)
