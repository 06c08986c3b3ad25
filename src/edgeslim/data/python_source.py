"""``--data python:module:function`` (or ``python:path/to/file.py:function``): your own loaders.

The function is called without arguments and returns ``(train_loader, eval_loader)``: iterables
of ``(images, labels)`` batches (NCHW float tensors, integer labels), e.g. two ``DataLoader``.
They are used as they are (their own batch size, transforms and shuffling); calibration takes the
first images of the training loader.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

import torch

from edgeslim.data.sources import DataOptions, Limited, out_of_range, register_data_source
from edgeslim.errors import DataError
from edgeslim.user_code import CallableSpec, UserCodeError, call, parse_spec

#: Batches of each loader looked at by ``check`` / ``check_labels``.
CHECK_BATCHES = 4


class PythonSource:
    """See the module docstring."""

    def __init__(self, spec: CallableSpec) -> None:
        self.spec = spec
        self.name = f"python:{spec}"
        self.eval_name = f"python:{spec}/eval"
        self._loaders: tuple[Any, Any] | None = None

    def loaders(self) -> tuple[Any, Any]:
        """``(train_loader, eval_loader)`` returned by the function (called once)."""
        if self._loaders is None:
            try:
                result = call(self.spec)
            except UserCodeError as exc:
                raise DataError(f"--data {self.name}: {exc}") from exc
            if not (isinstance(result, tuple | list) and len(result) == 2):
                raise DataError(
                    f"{self.spec}() returned {type(result).__name__}; it must return (train_loader, eval_loader)"
                )
            for what, loader in zip(("train_loader", "eval_loader"), result, strict=True):
                if not hasattr(loader, "__iter__"):
                    raise DataError(
                        f"{self.spec}(): {what} is a {type(loader).__name__}, not an iterable of "
                        "(images, labels) batches"
                    )
            self._loaders = (result[0], result[1])
        return self._loaders

    def _first(self, which: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        what = ("train_loader", "eval_loader")[which]
        batches = list(islice(iter(self.loaders()[which]), CHECK_BATCHES))
        if not batches:
            raise DataError(f"{self.spec}(): {what} is empty")
        for item in batches:
            ok = (
                isinstance(item, tuple | list)
                and len(item) == 2
                and isinstance(item[0], torch.Tensor)
                and isinstance(item[1], torch.Tensor)
                and item[0].ndim == 4
                and item[1].ndim == 1
                and not item[1].is_floating_point()
                and len(item[0]) == len(item[1])
            )
            if not ok:
                raise DataError(
                    f"{self.spec}(): {what} must yield (images[N,C,H,W], labels[N] integer) batches, got "
                    f"{_describe(item)}"
                )
        return batches

    def check(self) -> None:
        """The loaders yield ``(images, labels)`` batches of the right shapes (first few batches)."""
        self._first(0)
        self._first(1)

    def check_labels(self, num_outputs: int) -> None:
        """Labels of the first few batches of each loader fit the model's outputs."""
        for which in (0, 1):
            labels = torch.cat([y for _, y in self._first(which)])
            problem = out_of_range(labels, num_outputs)
            if problem:
                raise DataError(f"{self.spec}(): {('train_loader', 'eval_loader')[which]} {problem}")

    def channels(self) -> int:
        """Channels of the first training batch."""
        return int(self._first(0)[0][0].shape[1])

    def train_loader(self, batch_size: int, *, augment: bool = False, shuffle: bool = True, seed: int = 0) -> Any:
        """Your training loader, as it is."""
        return self.loaders()[0]

    def eval_loader(self, batch_size: int, *, limit: int | None = None) -> Any:
        """Your evaluation loader, cut after ``limit`` images."""
        return Limited(self.loaders()[1], limit)

    def calibration(self, n: int, *, batch_size: int = 64, seed: int = 0) -> Any:
        """The first ``n`` images of your training loader."""
        return list(Limited(self.loaders()[0], n))


def _describe(item: Any) -> str:
    if isinstance(item, tuple | list):
        return (
            "("
            + ", ".join(f"{type(v).__name__}{tuple(v.shape) if isinstance(v, torch.Tensor) else ''}" for v in item)
            + ")"
        )
    return type(item).__name__


@register_data_source("python")
def python_source(arg: str, options: DataOptions) -> PythonSource:
    """``python:module:function`` or ``python:path/to/file.py:function``."""
    try:
        return PythonSource(parse_spec(arg, what="--data python:"))
    except UserCodeError as exc:
        raise DataError(str(exc)) from None
