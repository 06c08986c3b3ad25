"""``--model FILE.py:factory`` / ``package.module:factory`` with ``--weights``, chained prune → quantize → export."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import edgeslim
from edgeslim.cli import app
from edgeslim.data import DataOptions, evaluate, open_data
from edgeslim.errors import DataError, ModelLoadError
from tests.cli.conftest import last_json, run_cli
from tests.data.test_user_data import make_imagefolder

NET_PY = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2),
    )


def broken():
    raise ValueError("bad width")
"""


@pytest.fixture
def net_py(tmp_path: Path) -> Path:
    path = tmp_path / "net.py"
    path.write_text(NET_PY)
    return path


def test_user_model_and_imagefolder_chain_prune_quantize_export(tmp_path: Path, net_py: Path) -> None:
    """The issue's contract: prune a user's build() on an image folder, quantize with --eval on val/, export."""
    data = make_imagefolder(tmp_path / "imgs", n=6, size=20)
    weights = tmp_path / "w.pt"
    torch.save(edgeslim.models.load(f"{net_py}:build").state_dict(), weights)
    out, q = tmp_path / "OUT", tmp_path / "Q"
    pruned = last_json(
        run_cli(
            "prune",
            "--model",
            f"{net_py}:build",
            "--weights",
            str(weights),
            "--data",
            f"imagefolder:{data}",
            "--input-size",
            "32",
            "--criterion",
            "l1",
            "--target",
            "params=0.5",
            "--out",
            str(out),
            "--json",
        )
    )
    assert 0.45 < pruned["params_fraction"] < 0.55
    quant = last_json(
        run_cli(
            "quantize",
            "--model",
            str(out / "model.pt"),
            "--data",
            f"imagefolder:{data}",
            "--input-size",
            "32",
            "--scheme",
            "int8",
            "--calib",
            "64",
            "--eval",
            "--out",
            str(q),
            "--json",
        )
    )
    # top1_fp32 is measured on val/ (12 images): the same number evaluate() gives on that split
    val = open_data(f"imagefolder:{data}", DataOptions(input_size=32)).eval_loader(50)
    assert quant["top1_fp32"] == pytest.approx(evaluate(edgeslim.load(out / "model.pt"), val))
    assert "top1_quant" in quant and quant["data"] == f"imagefolder:{data.resolve()}"
    lineage = edgeslim.io.load_meta(q / "model.pt")["lineage"]
    first = lineage[0]
    assert first["file"] == str(net_py.resolve()) and first["factory"] == "build"
    assert first["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert [s["step"] for s in lineage] == ["float", "prune", "quantize"]
    key = f"imagefolder:{data.resolve()}/val[:12]@32x32"
    assert lineage[-1]["top1"][key] == pytest.approx(quant["top1_quant"])
    exported = last_json(
        run_cli(
            "export",
            "--model",
            str(q / "model.pt"),
            "--data",
            f"imagefolder:{data}",
            "--input-size",
            "32",
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "q.onnx"),
            "--json",
        )
    )
    assert exported["accuracy"]["eval_key"] == key and exported["accuracy"]["float_source"] == "lineage"
    assert exported["accuracy"]["images"] == 12 and exported["verification"]["passed"]


def test_factory_error_is_one_line_not_a_traceback(tmp_path: Path, net_py: Path) -> None:
    proc = run_cli("prune", "--model", f"{net_py}:broken", "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2
    assert "net.py:broken() raised ValueError: bad width" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr


def _invoke(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def test_weights_mismatch_and_saved_file_with_weights(tmp_path: Path, net_py: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"0.weight": torch.zeros(1)}, bad)
    res = _invoke("prune", "--model", f"{net_py}:build", "--weights", str(bad), "--out", str(tmp_path / "o"))
    msg = " ".join(res.output.split())  # type: ignore[attr-defined]
    assert res.exit_code == 2 and f"error: {ModelLoadError.__name__}:" in msg, msg  # type: ignore[attr-defined]
    assert "bad.pt do not match" in msg and "missing keys 0.bias" in msg
    saved = tmp_path / "m.pt"
    edgeslim.save(edgeslim.models.load(f"{net_py}:build"), saved)
    res = _invoke("quantize", "--model", str(saved), "--weights", str(bad), "--out", str(tmp_path / "q"))
    assert res.exit_code == 2 and "carries its own weights" in res.output  # type: ignore[attr-defined]


def test_data_driven_prune_on_npz_and_labels_checked(tmp_path: Path, net_py: Path) -> None:
    rng = np.random.default_rng(0)
    npz = tmp_path / "d.npz"
    np.savez(
        npz,
        x=rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8),
        y=np.arange(24) % 2,
        x_val=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
        y_val=np.arange(8) % 2,
    )
    res = _invoke(
        "prune",
        "--model",
        f"{net_py}:build",
        "--data",
        f"npz:{npz}",
        "--input-size",
        "16",
        "--criterion",
        "taylor",
        "--target",
        "ratio=0.25",
        "--eval",
        "--batch-size",
        "8",
        "--out",
        str(tmp_path / "o"),
        "--json",
    )
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    summary = last_json(res)  # type: ignore[arg-type]
    assert summary["data"] == f"npz:{npz.resolve()}" and 0 <= summary["top1_after"] <= 1
    meta = edgeslim.io.load_meta(tmp_path / "o" / "model.pt")
    assert list(meta["lineage"][-1]["top1"]) == [f"npz:{npz.resolve()}/val[:8]@16x16"]
    ten = tmp_path / "ten.npz"
    np.savez(ten, x=np.zeros((10, 16, 16, 3), np.uint8), y=np.arange(10))
    res = _invoke("quantize", "--model", f"{net_py}:build", "--data", f"npz:{ten}", "--out", str(tmp_path / "q"))
    msg = " ".join(res.output.split())  # type: ignore[attr-defined]
    assert res.exit_code == 2 and f"error: {DataError.__name__}:" in msg, msg  # type: ignore[attr-defined]
    assert "ten.npz: training labels range over [0, 9] but the model has 2 outputs" in msg


LOADERS_PY = """
import torch
from torch.utils.data import DataLoader, TensorDataset


def loaders():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 16, 16, generator=g), torch.arange(32) % 2
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=g), DataLoader(TensorDataset(x, y), batch_size=8)
"""


def test_sensitivity_on_python_loaders(tmp_path: Path, net_py: Path) -> None:
    (tmp_path / "loaders.py").write_text(LOADERS_PY)
    res = _invoke(
        "sensitivity",
        "--model",
        f"{net_py}:build",
        "--data",
        f"python:{tmp_path / 'loaders.py'}:loaders",
        "--input-size",
        "16",
        "--ratios",
        "0.5",
        "--batches",
        "1",
        "--out",
        str(tmp_path / "s"),
        "--json",
    )
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    summary = last_json(res)  # type: ignore[arg-type]
    assert summary["data"] == f"python:{(tmp_path / 'loaders.py').resolve()}:loaders" and summary["groups"] == 2
    assert 0 <= summary["base_accuracy"] <= 1
