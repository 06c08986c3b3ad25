"""``--data npz:FILE``: images and labels in a NumPy ``.npz`` (read with ``allow_pickle=False``).

Arrays: ``x`` and ``y`` (training), and optionally ``x_val`` and ``y_val`` (evaluation; without
them the training arrays are evaluated on, and results say ``.../train``). Two layouts of ``x``:

- ``uint8`` NHWC ``(N, H, W, C)`` or NHW ``(N, H, W)`` (grayscale): pixels / 255, then
  ``--mean`` / ``--std`` if given;
- floating point NCHW ``(N, C, H, W)``: used as they are (already normalised).

Both are resized to ``--input-size`` when it differs. ``y``: integer class indices ``(N,)``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from edgeslim.data.sources import DataOptions, DatasetSource, normalize, register_data_source
from edgeslim.errors import DataError

_CHANNELS = (1, 3, 4)


def _images(path: Path, key: str, x: np.ndarray, options: DataOptions) -> torch.Tensor:
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataError(f"{path}: array {key!r} is empty")
    if x.dtype == np.uint8:
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] not in _CHANNELS:
            raise DataError(
                f"{path}: uint8 array {key!r} has shape {x.shape}; uint8 images must be NHWC (N, H, W, C) "
                "with C in 1, 3, 4, or NHW (N, H, W)"
            )
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float().div_(255.0)
        return normalize(t, options)
    if np.issubdtype(x.dtype, np.floating):
        if x.ndim != 4 or x.shape[1] not in _CHANNELS:
            raise DataError(
                f"{path}: float array {key!r} has shape {x.shape}; float images must be NCHW (N, C, H, W) "
                "with C in 1, 3, 4 (uint8 images: NHWC)"
            )
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return normalize(t, DataOptions(input_size=options.input_size))  # already normalised
    raise DataError(f"{path}: array {key!r} is {x.dtype}; images must be uint8 NHWC or float NCHW")


def _labels(path: Path, key: str, y: np.ndarray, n: int) -> torch.Tensor:
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise DataError(f"{path}: {key!r} must be a 1-D integer array of class indices, got {y.dtype} {y.shape}")
    if len(y) != n:
        raise DataError(f"{path}: {key!r} has {len(y)} labels for {n} images")
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{path}: {key!r} has negative labels (min {int(y.min())}); labels are class indices 0..C-1")
    return torch.from_numpy(y.astype(np.int64))


class NpzSource(DatasetSource):
    """See the module docstring."""

    def __init__(self, path: Path, options: DataOptions) -> None:
        self.path, self.options = path, options
        self.name = f"npz:{path}"
        self.eval_name = ""
        self.where = str(path)
        self._sets: tuple[TensorDataset, TensorDataset] | None = None

    def datasets(self) -> tuple[TensorDataset, TensorDataset]:
        """``(train, eval)``, read and checked the first time."""
        if self._sets is None:
            p = self.path
            if not p.is_file():
                raise DataError(f"npz file {p} does not exist")
            try:
                with np.load(p, allow_pickle=False) as f:
                    arrays = {k: f[k] for k in f.files}
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
                raise DataError(
                    f"cannot read {p} as an .npz of arrays ({type(exc).__name__}: {exc}); "
                    "save it with numpy.savez(path, x=images, y=labels)"
                ) from exc
            missing = [k for k in ("x", "y") if k not in arrays]
            if missing:
                raise DataError(
                    f"{p} has no array {' or '.join(repr(k) for k in missing)} (it has "
                    f"{', '.join(sorted(arrays)) or 'none'}); save images as x and labels as y"
                )
            if ("x_val" in arrays) != ("y_val" in arrays):
                raise DataError(f"{p}: give both x_val and y_val (evaluation split) or neither")
            split = ("x_val", "y_val") if "x_val" in arrays else ("x", "y")
            self.eval_name = f"npz:{p}/{'val' if 'x_val' in arrays else 'train'}"
            sets = []
            for xk, yk in (("x", "y"), split):
                x = _images(p, xk, arrays[xk], self.options)
                sets.append(TensorDataset(x, _labels(p, yk, arrays[yk], len(x))))
            self._sets = (sets[0], sets[1])
        return self._sets

    def labels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` and the evaluation labels."""
        train, val = self.datasets()
        return train.tensors[1], val.tensors[1]


@register_data_source("npz")
def npz_source(arg: str, options: DataOptions) -> NpzSource:
    """``npz:FILE``."""
    if not arg:
        raise DataError("--data npz:FILE needs the .npz file (arrays x, y [, x_val, y_val])")
    return NpzSource(Path(arg).expanduser().resolve(), options)
