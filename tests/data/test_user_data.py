"""Data sources: ``imagefolder:DIR``, ``npz:FILE``, ``python:module:function`` and their errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeslim.data import DATA_SOURCES, DataOptions, open_data
from edgeslim.data.sources import parse_floats
from edgeslim.errors import DataError


def make_imagefolder(root: Path, classes: dict[str, tuple[str, ...]] | None = None, n: int = 3, size: int = 12) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png``, random pixels (no accuracy meant)."""
    rng = np.random.default_rng(0)
    for split, names in (classes or {"train": ("a", "b"), "val": ("a", "b")}).items():
        for c in names:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_registry_lists_the_four_sources() -> None:
    assert {"fashion-mnist", "imagefolder", "npz", "python"} <= set(DATA_SOURCES.names())
    with pytest.raises(DataError, match=r"unknown data source 'csv'; known: fashion-mnist, imagefolder, npz, python"):
        open_data("csv:foo.csv")


def test_imagefolder_loads_resized_and_normalised(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "imgs")
    src = open_data(f"imagefolder:{root}", DataOptions(input_size=8, mean=(0.5,), std=(0.25,)))
    assert src.eval_name == f"imagefolder:{root.resolve()}/val"
    assert src.channels() == 3
    x, y = next(iter(src.eval_loader(4)))
    assert x.shape == (4, 3, 8, 8) and y.tolist() == [0, 0, 0, 1]
    assert x.min() >= (0 - 0.5) / 0.25 - 1e-6 and x.max() <= (1 - 0.5) / 0.25 + 1e-6 and x.min() < 0 < x.max()
    cal = list(src.calibration(5, batch_size=2, seed=0))
    assert sum(len(b[1]) for b in cal) == 5
    train = list(src.train_loader(4, augment=True, seed=0))
    assert sum(len(b[1]) for b in train) == 6
    src.check_labels(2)
    with pytest.raises(
        DataError,
        match=re.escape(str(root.resolve())) + r": training labels range over \[0, 1\] but "
        r"the model has 1 outputs",
    ):
        src.check_labels(1)


def test_imagefolder_errors_name_the_folder(tmp_path: Path) -> None:
    mislabelled = make_imagefolder(tmp_path / "m", {"train": ("cat", "dog"), "val": ("cat", "fox")})
    with pytest.raises(
        DataError, match=r"class folders of train/ and val/ differ \(only in train/: dog; only in val/: fox\)"
    ):
        open_data(f"imagefolder:{mislabelled}")
    no_val = make_imagefolder(tmp_path / "nv", {"train": ("a",)})
    with pytest.raises(DataError, match=r"nv has no val/ folder"):
        open_data(f"imagefolder:{no_val}")
    empty = tmp_path / "e"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    with pytest.raises(DataError, match=r"e/train: Couldn't find any class folder"):
        open_data(f"imagefolder:{empty}")
    with pytest.raises(DataError, match=r"image folder .*nowhere does not exist"):
        open_data(f"imagefolder:{tmp_path / 'nowhere'}")
    broken = make_imagefolder(tmp_path / "b")
    (broken / "val" / "a" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*b/val/a/0\.png"):
        open_data(f"imagefolder:{broken}")


def test_npz_uint8_nhwc_and_nhw(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    nhwc = tmp_path / "rgb.npz"
    np.savez(nhwc, x=rng.integers(0, 256, (10, 6, 6, 3), dtype=np.uint8), y=np.arange(10) % 4)
    src = open_data(f"npz:{nhwc}", DataOptions(input_size=8))
    x, y = next(iter(src.eval_loader(10)))
    assert x.shape == (10, 3, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert y.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert src.eval_name == f"npz:{nhwc.resolve()}/train"  # no x_val: evaluated on x, and said so
    gray = tmp_path / "gray.npz"
    np.savez(
        gray,
        x=np.full((4, 6, 6), 255, np.uint8),
        y=np.zeros(4, np.int64),
        x_val=np.zeros((2, 6, 6), np.uint8),
        y_val=np.ones(2, np.int64),
    )
    src = open_data(f"npz:{gray}", DataOptions(mean=(0.5,), std=(0.5,)))
    assert src.channels() == 1 and src.eval_name.endswith("/val")
    x, _y = next(iter(src.train_loader(4, shuffle=False)))
    assert x.shape == (4, 1, 6, 6) and torch.allclose(x, torch.ones_like(x))
    xv, yv = next(iter(src.eval_loader(8)))
    assert torch.allclose(xv, -torch.ones_like(xv)) and yv.tolist() == [1, 1]


def test_npz_float_nchw_used_as_is(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(5, 3, 4, 4)).astype(np.float32)
    path = tmp_path / "f.npz"
    np.savez(path, x=data, y=np.arange(5))
    src = open_data(f"npz:{path}", DataOptions(mean=(9.0,), std=(9.0,)))
    x, _ = next(iter(src.eval_loader(5)))
    assert torch.equal(x, torch.from_numpy(data))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((3, 4, 4, 3), np.uint8)}, r"has no array 'y' \(it has x\); save images as x and labels as y"),
        ({"x": np.zeros((0, 4, 4, 3), np.uint8), "y": np.zeros(0, np.int64)}, r"array 'x' is empty"),
        ({"x": np.zeros((3, 3, 5, 5), np.uint8), "y": np.zeros(3, np.int64)}, r"uint8 images must be NHWC"),
        ({"x": np.zeros((3, 5, 5, 3), np.float32), "y": np.zeros(3, np.int64)}, r"float images must be NCHW"),
        ({"x": np.zeros((3, 4, 4, 3), np.uint8), "y": np.zeros(2, np.int64)}, r"'y' has 2 labels for 3 images"),
        ({"x": np.zeros((3, 4, 4, 3), np.uint8), "y": np.zeros(3, np.float32)}, r"'y' must be a 1-D integer array"),
        ({"x": np.zeros((3, 4, 4, 3), np.uint8), "y": -np.ones(3, np.int64)}, r"'y' has negative labels"),
        (
            {
                "x": np.zeros((3, 4, 4, 3), np.uint8),
                "y": np.zeros(3, np.int64),
                "x_val": np.zeros((1, 4, 4, 3), np.uint8),
            },
            r"give both x_val and y_val",
        ),
    ],
)
def test_npz_errors_name_the_file(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"bad\.npz.*" + message):
        open_data(f"npz:{path}")


def test_npz_unreadable_and_labels_out_of_range(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot read .*junk\.npz as an \.npz of arrays"):
        open_data(f"npz:{junk}")
    with pytest.raises(DataError, match=r"npz file .*absent\.npz does not exist"):
        open_data(f"npz:{tmp_path / 'absent.npz'}")
    path = tmp_path / "ten.npz"
    np.savez(path, x=np.zeros((10, 4, 4, 3), np.uint8), y=np.arange(10))
    with pytest.raises(DataError, match=r"ten\.npz: training labels range over \[0, 9\] but the model has 5 outputs"):
        open_data(f"npz:{path}").check_labels(5)


LOADERS_PY = """
import torch
from torch.utils.data import DataLoader, TensorDataset


def loaders():
    x = torch.randn(12, 1, 8, 8)
    y = torch.arange(12) % 3
    return DataLoader(TensorDataset(x, y), batch_size=5), DataLoader(TensorDataset(x, y), batch_size=5)


def one():
    return [1, 2, 3]


def float_labels():
    return [(torch.zeros(2, 1, 4, 4), torch.zeros(2))], [(torch.zeros(2, 1, 4, 4), torch.zeros(2))]
"""


def test_python_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_loaders.py").write_text(LOADERS_PY)
    monkeypatch.syspath_prepend(str(tmp_path))
    src = open_data("python:my_loaders:loaders")
    assert src.channels() == 1 and src.eval_name == "python:my_loaders:loaders/eval"
    assert [len(y) for _, y in src.eval_loader(0, limit=7)] == [5, 2]
    assert sum(len(y) for _, y in src.calibration(6)) == 6
    src.check_labels(3)
    with pytest.raises(
        DataError, match=r"my_loaders:loaders\(\): train_loader labels range over \[0, 2\] but the model has 2"
    ):
        src.check_labels(2)
    file_src = open_data(f"python:{tmp_path / 'my_loaders.py'}:loaders")
    assert file_src.channels() == 1
    with pytest.raises(
        DataError, match=r"my_loaders:one\(\) returned list; it must return \(train_loader, eval_loader\)"
    ):
        open_data("python:my_loaders:one")
    with pytest.raises(
        DataError,
        match=r"train_loader must yield \(images\[N,C,H,W\], labels\[N\] integer\) batches, "
        r"got \(Tensor\(2, 1, 4, 4\), Tensor\(2,\)\)",
    ):
        open_data("python:my_loaders:float_labels")
    with pytest.raises(DataError, match=r"my_loaders has no 'absent'"):
        open_data("python:my_loaders:absent")
    with pytest.raises(DataError, match=r"expected path/to/file\.py:function or package\.module:function"):
        open_data("python:not a spec")


def test_mean_std_parsing() -> None:
    assert parse_floats("0.485, 0.456,0.406", "--mean") == (0.485, 0.456, 0.406)
    assert parse_floats(None, "--mean") is None
    with pytest.raises(DataError, match="--mean must be comma-separated numbers"):
        parse_floats("a,b", "--mean")
    with pytest.raises(DataError, match="--std values must be positive"):
        parse_floats("0.2,0", "--std")
