"""``edgeslim pack`` / ``edgeslim unpack``: refusals, clear errors, and unpacked artefacts that run.

The .esz used here is a SqueezeNet 1.1 (a torchvision architecture, so unpack can rebuild it)
with random weights, packed without fine-tuning: enough for the format, bit-exactness and the
runtimes, never for accuracy (the benchmark measures that on the trained references).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter
from onnx import numpy_helper
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

import edgeslim
from edgeslim import models
from edgeslim.cli import app
from edgeslim.data import fashion_mnist_loader
from edgeslim.deep_compression import PackConfig, esz, pack, unpack
from tests.cli.conftest import run_cli


@pytest.fixture(scope="module")
def esz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = models.load("squeezenet1_1", num_classes=10)
    g = torch.Generator().manual_seed(0)
    data = DataLoader(
        TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)), batch_size=8
    )
    cfg = PackConfig(
        sparsity=0.8,
        sensitivity_sparsities=(0.9,),
        prune_steps=1,
        prune_epochs=0,
        quant_epochs=0,
        bits=(3, 4, 5),
        kmeans_iterations=10,
    )
    path = tmp_path_factory.mktemp("esz") / "sq.esz"
    pack(net, cfg, path=path, train_data=data, heldout=data, meta={"input_size": 32})
    return path


def _images(n: int) -> np.ndarray:
    return next(iter(fashion_mnist_loader("test", limit=n, batch_size=n)))[0].numpy()


_LAST: dict[str, str] = {}


def _invoke(*args: str) -> tuple[int, str]:
    """Exit code and output, with rich's error box and line wrapping flattened to single spaces."""
    res = CliRunner().invoke(app, list(args))
    _LAST["stdout"] = res.stdout
    return res.exit_code, re.sub(r"[│╭╮╰╯─\s]+", " ", res.output)


def test_pack_refuses_an_existing_output_and_a_wrong_suffix(tmp_path: Path) -> None:
    (tmp_path / "R.esz").write_bytes(b"mine")
    code, out = _invoke("pack", "--model", "resnet18-fmnist", "--out", str(tmp_path / "R.esz"))
    assert code == 2 and "already holds R.esz; pass --force" in out
    assert (tmp_path / "R.esz").read_bytes() == b"mine"
    code, out = _invoke("pack", "--model", "resnet18-fmnist", "--out", str(tmp_path / "R.pt"))
    assert code == 2 and "does not end in .esz" in out


def test_pack_json_contract_on_a_small_model(tmp_path: Path) -> None:
    """``pack --model M --out R.esz --json``: the last stdout line has bytes, ratio and top1 (a fraction)."""
    src = tmp_path / "tiny.py"
    src.write_text(
        "from torch import nn\n\n\ndef build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), "
        "nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))\n"
    )
    dest = tmp_path / "R.esz"
    code, out = _invoke(
        "pack", "--model", f"{src}:build", "--out", str(dest), "--json",
        "--prune-epochs", "0", "--quant-epochs", "0", "--prune-steps", "1", "--eval-samples", "100",
    )
    assert code == 0, out
    summary = json.loads(_LAST["stdout"].strip().splitlines()[-1])
    assert summary["bytes"] == dest.stat().st_size and 0.0 <= summary["top1"] <= 1.0
    assert summary["ratio"] == pytest.approx(summary["fp32_bytes"] / summary["bytes"]) and summary["ratio"] > 3
    assert [s["stage"] for s in summary["stages"]] == ["fp32", "pruned", "codebook", "entropy"]
    assert all(e.get("int8_step") for e in esz.read(dest).manifest["layers"])  # packed on the int8 grid


def test_pack_unknown_init_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli(
        "pack", "--model", "resnet18-fmnist", "--out", str(tmp_path / "R.esz"), "--init", "fancy", check=False
    )
    assert proc.returncode == 2
    assert "--init 'fancy' is not a centroid initialisation: use linear or density" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "R.esz").exists()


def _packed_ints(esz_file: Path) -> dict[str, np.ndarray]:
    """Layer -> the integers k of its packed weight (k·int8_step)."""
    m = esz.read(esz_file).manifest
    state = unpack(esz_file).state_dict()
    out = {}
    for e in m["layers"]:
        w, step = state[e["name"]], torch.tensor(e["int8_step"], dtype=torch.float32)
        assert torch.equal(torch.round(w / step) * step, w), e["name"]  # the file's weights are int8 codes
        out[e["name"]] = torch.round(w / step).to(torch.int64).numpy()
    return out


def _onnx_weight_ints(path: Path) -> list[np.ndarray]:
    """The integer weights (minus their zero point) the ONNX file's DequantizeLinear nodes read.

    4-bit codes are decoded through their codebook; a u8u8 file's uint8 weights (+128, zero point
    +128) give back the same integers as an int8 file's.
    """
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        w, zp = node.input[0], inits[node.input[2]].astype(np.int64)
        if w in inits and inits[w].dtype in (np.int8, np.uint8) and inits[w].ndim >= 2:
            q = inits[w].astype(np.int64)
        elif f"{w}__codes" in inits:
            codes, book = inits[f"{w}__codes"].astype(np.int64), inits[f"{w}__codebook"]
            q = np.take_along_axis(book, codes, 1).reshape(inits[f"{w}__shape"]).astype(np.int64)
        else:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if zp.ndim:
            shape[axis] = -1
        out.append(q - zp.reshape(shape))
    return out


def test_unpack_to_onnx_carries_the_packed_integers_and_runs_in_onnxruntime(esz_file: Path, tmp_path: Path) -> None:
    dest = tmp_path / "m.onnx"
    code, out = _invoke("unpack", str(esz_file), "--to", str(dest), "--json", "--eval-samples", "0")
    assert code == 0, out
    summary = json.loads(_LAST["stdout"].strip().splitlines()[-1])
    assert summary["path"] == str(dest) and summary["bytes"] == dest.stat().st_size
    assert summary["quant"] == "int8" and summary["verification"]["passed"] is True
    assert summary["min_weight_sqnr_db"] >= 100  # converted weights = folded packed weights to float32 precision
    assert summary["lowered"]["lowered"] >= 1 and summary["bytes"] < summary["bytes_int8"]  # 3-bit layers as 4-bit codes
    packed = _packed_ints(esz_file)
    onnx_ints = _onnx_weight_ints(dest)
    assert len(onnx_ints) == len(packed)
    for name, k in packed.items():  # every packed layer is in the file with exactly its integers
        assert any(q.shape == k.shape and np.array_equal(q, k) for q in onnx_ints), name
    x = _images(8)
    sess = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert got.shape == (8, 10) and np.isfinite(got).all()


def test_unpack_to_tflite_is_int8_with_the_packed_integers_and_runs_in_litert(esz_file: Path, tmp_path: Path) -> None:
    dest = tmp_path / "m.tflite"
    code, out = _invoke("unpack", str(esz_file), "--to", str(dest), "--eval-samples", "0", "--json")
    assert code == 0, out
    summary = json.loads(_LAST["stdout"].strip().splitlines()[-1])
    assert summary["quant"] == "int8" and summary["verification"]["passed"] is True
    it = Interpreter(model_path=str(dest))
    it.allocate_tensors()
    int8 = []
    for d in it.get_tensor_details():
        if d["dtype"] == np.int8 and len(d["shape"]) >= 2:
            try:
                int8.append(it.get_tensor(d["index"]).astype(np.int64))
            except ValueError:  # activations have no data before a run
                continue
    for name, k in _packed_ints(esz_file).items():  # conv weights are OHWI in TFLite
        want = k.transpose(0, 2, 3, 1) if k.ndim == 4 else k
        assert any(q.shape == want.shape and np.array_equal(q, want) for q in int8), name
    inp, outp = it.get_input_details()[0], it.get_output_details()[0]
    it.set_tensor(inp["index"], _images(1))
    it.invoke()
    assert np.isfinite(it.get_tensor(outp["index"])).all()


def test_unpack_to_pt_is_bit_exact_and_refuses_to_overwrite(esz_file: Path, tmp_path: Path) -> None:
    dest = tmp_path / "m.pt"
    code, out = _invoke("unpack", str(esz_file), "--to", str(dest))
    assert code == 0, out
    back, want = edgeslim.load(dest).state_dict(), unpack(esz_file).state_dict()
    assert set(back) == set(want) and all(torch.equal(back[k], want[k]) for k in want)
    before = dest.read_bytes()
    code, out = _invoke("unpack", str(esz_file), "--to", str(dest))
    assert code == 2 and "already holds m.pt; pass --force" in out
    assert dest.read_bytes() == before
    code, out = _invoke("unpack", str(esz_file), "--to", str(tmp_path / "m.h5"))
    assert code == 2 and "must end in .pt, .onnx, .engine or .tflite" in out  # .pt + every exporter's suffix


def test_truncated_file_is_a_one_line_error_and_writes_nothing(esz_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.esz"
    bad.write_bytes(esz_file.read_bytes()[:-100])
    proc = run_cli("unpack", str(bad), "--to", str(tmp_path / "m.onnx"), check=False)
    assert proc.returncode == 2
    err = " ".join(proc.stderr.split())
    assert (
        f"{bad} is not a usable .esz file: truncated" in err
        and "copy it again, or re-create it with `edgeslim pack`" in err
    )
    assert "Traceback" not in proc.stderr and not (tmp_path / "m.onnx").exists()
