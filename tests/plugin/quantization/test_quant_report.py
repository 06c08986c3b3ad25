"""Reports: SQNR maths, Markdown, plot."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from edgeslim.plugin.quantization import QuantResult
from edgeslim.plugin.quantization.report import sqnr_db


def test_sqnr_db_values() -> None:
    x = torch.ones(100)
    assert sqnr_db(x, x) == math.inf
    assert sqnr_db(x, x * 1.1) == pytest.approx(20.0, abs=1e-4)  # noise 0.01 per element -> 10*log10(1/0.01)


def test_report_table_and_plot(int8_resnet: QuantResult, tmp_path: Path) -> None:
    rep = int8_resnet.report
    assert len(rep.layers) == 21 and all(layer.weight_bits == 8 for layer in rep.layers)
    assert min(layer.sqnr_db for layer in rep.layers) > 30
    assert rep.float_bytes / rep.weight_bytes > 3.9
    md = rep.to_markdown()
    assert "layer4.1.conv2" in md and md.count("\n") == 22
    png = rep.plot(tmp_path / "sqnr.png")
    assert png.stat().st_size > 5000
    assert rep.to_dict()["layers"][0]["name"] == "conv1"
