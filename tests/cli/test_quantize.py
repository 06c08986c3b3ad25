"""``edgeslim quantize``: JSON contract on stdout, saved model, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

import edgeslim
from edgeslim.cli import app


def test_quantize_int8_json_contract(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["quantize", "--model", "resnet18-fmnist", "--scheme", "int8", "--calib", "64",
                                   "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["mode"] == "ptq" and summary["scheme"] == "int8"
    assert 11_000_000 < summary["weight_bytes"] < 11_300_000
    assert summary["float_weight_bytes"] / summary["weight_bytes"] > 3.9
    assert summary["path"] == summary["model_path"]
    model = edgeslim.load(summary["model_path"])
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 10)
    for f in ("report.json", "report.md", "sqnr.png"):
        assert (tmp_path / f).is_file()


def test_bad_scheme_and_bits_fail_before_work(tmp_path: Path) -> None:
    for scheme in ("log2:1", "codebook:17", "fancy"):
        res = CliRunner().invoke(app, ["quantize", "--model", "resnet18-fmnist", "--scheme", scheme, "--out", str(tmp_path)])
        assert res.exit_code != 0
        assert not (tmp_path / "model.pt").exists()
