"""``edgeslim quantize``: JSON contract on stdout, saved model, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import edgeslim
from edgeslim.cli import app
from tests.cli.conftest import run_cli


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


@pytest.mark.parametrize(
    ("scheme", "pattern"),
    [  # the bad value, what was wrong with it, and what is accepted instead
        ("log2:1", r"log2\b.*\b2\.\.16\b.*\bgot '?1'?(?!\d)"),
        ("codebook:17", r"codebook\b.*\b2\.\.16\b.*\bgot '?17'?(?!\d)"),
        ("fancy", r"'fancy'.*\bint8\b.*\bint16\b.*\bw8a16\b.*\blog2\b"),
    ],
)
def test_bad_scheme_and_bits_fail_before_work(scheme: str, pattern: str, tmp_path: Path) -> None:
    """The real command (exit code and message as a user sees them): names the bad value and the valid ones."""
    proc = run_cli("quantize", "--model", "resnet18-fmnist", "--scheme", scheme, "--out", str(tmp_path / "q"), check=False)
    assert proc.returncode == 2, proc.stderr
    msg = " ".join(proc.stderr.split())
    assert re.search(r"error: Quant\w*Error: ", msg), msg  # one line from run_app, no traceback
    assert re.search(pattern, msg), msg
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "q").exists()  # nothing written, not even the folder
