"""export(): atomic writes, overwrite protection, verification failures, unsupported ops, inspection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeslim.exporters import (
    ExportVerificationError,
    OutputExistsError,
    Tolerance,
    UnsupportedOpError,
    export,
)
from edgeslim.exporters.accuracy import AccuracyCheck
from edgeslim.exporters.api import ExportResult
from edgeslim.exporters.config import ExportOptions
from edgeslim.exporters.verify import VerificationReport, compare


def test_existing_output_is_not_overwritten(tiny_model, example, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="overwrite"):
        export(tiny_model, "onnx", out, example, verify=False)
    assert out.read_bytes() == b"keep me"
    res = export(tiny_model, "onnx", out, example, verify=False, overwrite=True)
    assert res.bytes == out.stat().st_size > 1000
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)  # published with the usual mode


def test_failed_verification_raises_with_numbers_and_leaves_nothing(tiny_model, real_images, example, tmp_path: Path) -> None:
    impossible = Tolerance(min_cosine=1.01, min_top1_agreement=1.0)
    with pytest.raises(ExportVerificationError) as info:
        export(tiny_model, "onnx", tmp_path / "m.onnx", example, quant="int8", tolerance=impossible,
               calibration=real_images[64:], verify_inputs=real_images[:32])
    report = info.value.report
    assert report.samples == 32 and 0.99 < report.cosine <= 1.0 and not report.passed
    assert "cosine" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no half-written or unverified artefact


class _Inv(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.inv(x[:, :, :4, :4] + torch.eye(4))


class _Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.solver = _Inv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.solver(self.conv(x)).flatten(1)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_unsupported_op_names_op_and_module(fmt: str, tmp_path: Path) -> None:
    if fmt == "tflite":
        import litert_torch  # noqa: F401  (tflite extra, installed in CI: missing, it fails, never skips)
    with pytest.raises(UnsupportedOpError) as info:
        export(_Odd().eval(), fmt, tmp_path / f"m.{fmt}", torch.randn(1, 3, 8, 8), verify=False)
    assert "linalg_inv" in str(info.value.op) and info.value.module == "solver"
    assert "solver" in str(info.value) and "try" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_compare_numbers() -> None:
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    rep = compare(ref + np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 0.0]]), ref, Tolerance(0.99, 1.0, 0.5))
    assert rep.max_abs_error == pytest.approx(0.5) and rep.rel_max_abs_error == pytest.approx(0.25)
    assert rep.top1_agreement == 1.0 and rep.passed
    flipped = compare(ref[:, ::-1].copy(), ref, Tolerance(0.5, 0.9))
    assert flipped.top1_agreement == 0.0 and not flipped.passed


def test_result_round_trips_through_its_json_summary(tmp_path: Path) -> None:
    tol = Tolerance(0.98, 0.9)
    result = ExportResult(
        tmp_path / "m.onnx", "onnx", "int8", 1234, "nchw", {"name": "x", "dtype": "float32", "shape": [1, 3, 8, 8]},
        {"compute": {"Conv": "int8"}, "float_compute_ops": 0},
        VerificationReport(8, 0.1, 0.01, 0.02, 0.999, 1.0, tol, True, 7, 1.0),
        AccuracyCheck(16, "fashion-mnist[:16]@8x8", 0.9375, 0.875, "measured", 6.25, None, True),
        {"route": "ort"}, ExportOptions(quant="int8").to_dict(),
    )
    d = json.loads(json.dumps(result.to_dict()))
    assert set(d) == {"path", "format", "quant", "bytes", "layout", "input", "dtypes", "verification", "accuracy",
                      "top1_float", "top1_artefact", "metadata", "options"}
    assert d["path"] == str(tmp_path / "m.onnx") and (d["top1_float"], d["top1_artefact"]) == (0.9375, 0.875)
    assert d["verification"]["tolerance"] == {"min_cosine": 0.98, "min_top1_agreement": 0.9, "max_abs_error": None}
    assert ExportResult.from_dict(d) == result
    unverified = ExportResult(tmp_path / "m.onnx", "onnx", "fp32", 1, "nchw", {}, {}, None)
    d = unverified.to_dict()
    assert d["verification"] is d["accuracy"] is d["top1_float"] is d["top1_artefact"] is None
    assert ExportResult.from_dict(d) == unverified
