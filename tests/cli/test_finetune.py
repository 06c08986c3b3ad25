"""``edgeslim finetune``: two real CPU processes under torchrun, and the single-process command.

The data are synthetic (the class is the image's brightness): these tests check the mechanics of
the distributed run (ranks, sharding, agreement, saving), not an accuracy figure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import edgeslim
from edgeslim.cli import app
from edgeslim.io import read_header, state_sha256

NET_PY = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2),
    )
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``net.py`` (a small CNN) and ``d.npz``: 256 training and 64 evaluation 16x16 images, two classes."""
    root = tmp_path_factory.mktemp("ft")
    (root / "net.py").write_text(NET_PY)
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        return (rng.random((n, 16, 16, 3)) * 120 + y[:, None, None, None] * 120).astype(np.uint8), y

    (x, y), (xv, yv) = split(256), split(64)
    np.savez(root / "d.npz", x=x, y=y, x_val=xv, y_val=yv)
    return root / "net.py", root / "d.npz"


def _args(files: tuple[Path, Path], out: Path, *extra: str, model: str = "") -> list[str]:
    net, data = files
    return ["finetune", "--model", model or f"{net}:build", "--data", f"npz:{data}", "--input-size", "16",
            "--batch-size", "16", "--out", str(out), "--json", *extra]


def test_torchrun_two_cpu_processes_agree_and_rank0_saves(files: tuple[Path, Path], tmp_path: Path) -> None:
    """The issue's contract: ``torchrun --standalone --nproc_per_node 2 -m edgeslim.cli finetune ... --json``."""
    out = tmp_path / "OUT"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "edgeslim.cli", *_args(files, out, "--epochs", "3", "--lr", "0.2", "--target", "ratio=0.5")]
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stdout  # rank 0 prints, rank 1 stays quiet
    summary = json.loads(lines[0])
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    assert summary["ranks_agree"] is True and summary["rank0_saved"] is True
    assert summary["epochs"] == 3.0 and summary["steps"] == 24  # 256 images / 2 ranks / 16 per batch * 3
    assert summary["eval_images"] == 64
    assert summary["top1_after"] > summary["top1_before"]  # it trained (brightness is learnable)
    assert summary["out"] == str(out)
    model = out / "model.pt"
    assert summary["model_path"] == str(model)
    assert state_sha256(edgeslim.load(model).state_dict()) == summary["weights_sha256"]
    steps = read_header(model)["meta"]["lineage"]
    assert [s["step"] for s in steps] == ["float", "prune", "finetune"] and steps[-1]["world_size"] == 2
    assert summary["params_after_prune"] == 450 == sum(p.numel() for p in edgeslim.load(model).parameters())
    # both ranks log: the same input, the same pruned model (checked), and the same final weights
    pruned_sha = steps[1]["sha256"][:16]
    for rank in (0, 1):
        assert f"[rank {rank}/2] {files[0]}:build: 1,474 parameters" in proc.stderr
        assert f"[rank {rank}/2] pruned to ratio=0.5 (l1): 450 parameters, sha256 {pruned_sha}; the same on all 2 " \
               "ranks" in proc.stderr
        assert f"[rank {rank}/2] final weights sha256 {summary['weights_sha256'][:16]}; ranks agree (2 of 2)" in proc.stderr
    assert "Traceback" not in proc.stderr


def _invoke(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def _flat(text: str) -> str:
    """Output without rich's box characters and line breaks."""
    return re.sub(r"[│╭╮╰╯─\s]+", " ", text)


def test_refuses_an_existing_output_without_force(files: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "model.pt").write_bytes(b"mine")
    result = _invoke(*_args(files, out))
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert "already holds model.pt; pass --force to overwrite it" in _flat(result.output)  # type: ignore[attr-defined]
    assert (out / "model.pt").read_bytes() == b"mine"


def test_bad_epochs_named(files: tuple[Path, Path], tmp_path: Path) -> None:
    result = _invoke(*_args(files, tmp_path / "o", "--epochs", "0"))
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert "Invalid value for --epochs: must be > 0, got 0.0" in _flat(result.output)  # type: ignore[attr-defined]


def test_single_process_pruned_model_with_the_ancestor_as_teacher(files: tuple[Path, Path], tmp_path: Path) -> None:
    """prune → finetune --teacher ancestor (one process): the chain continues, lineage records both steps."""
    net, _ = files
    pruned = tmp_path / "P"
    result = _invoke("prune", "--model", f"{net}:build", "--criterion", "l1", "--target", "ratio=0.5",
                     "--input-size", "16", "--out", str(pruned), "--json")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    out = tmp_path / "F"
    result = _invoke(*_args(files, out, "--epochs", "1", "--lr", "0.1", "--teacher", "ancestor",
                            model=str(pruned / "model.pt")))
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    summary = json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[attr-defined]
    assert summary["world_size"] == 1 and summary["teacher"] == "ancestor" and summary["steps"] == 16
    loaded = edgeslim.load(out / "model.pt")
    assert state_sha256(loaded.state_dict()) == summary["weights_sha256"]
    assert loaded[0].out_channels == 4  # still the pruned width
    steps = read_header(out / "model.pt")["meta"]["lineage"]
    assert [s["step"] for s in steps] == ["float", "prune", "finetune"]
    assert steps[-1]["top1"] == {f"npz:{files[1]}/val[:64]@16x16": summary["top1_after"]}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without a GPU")
@pytest.mark.parametrize("command", ["finetune", "prune", "quantize", "sensitivity", "pack"])
def test_device_cuda_without_a_gpu_is_named(files: tuple[Path, Path], tmp_path: Path, command: str) -> None:
    net, _ = files
    args = [command, "--model", f"{net}:build", "--out", str(tmp_path / ("o.esz" if command == "pack" else "o")),
            "--device", "cuda"]
    result = _invoke(*args)
    # an EdgeslimError is printed as one line (error: ConfigError: ...) with exit code 2, no traceback
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    text = " ".join(result.output.split())  # type: ignore[attr-defined]
    assert ("ConfigError: --device cuda: no CUDA GPU is available on this machine (torch.cuda.is_available() is "
            "False); use --device cpu or --device auto") in text, text
    assert "Traceback" not in text
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.esz").exists()
