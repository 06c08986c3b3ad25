"""Verification against the float ancestor: top-1 of the artefact in its runtime vs the float model's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgeslim.data import fashion_mnist_loader
from edgeslim.exporters import export
from edgeslim.exporters.errors import ExportAccuracyError


def _eval() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(fashion_mnist_loader("test", limit=256, batch_size=128))


def test_fp32_artefact_matches_its_float_model(tiny_model, example, tmp_path: Path) -> None:
    res = export(tiny_model, "onnx", tmp_path / "m.onnx", example, eval_data=_eval(), eval_name="fashion-mnist/test")
    acc = res.accuracy
    assert acc is not None and acc.float_source == "measured" and acc.images == 256
    assert acc.eval_key == "fashion-mnist/test[:256]@32x32"
    assert 0.4 < acc.top1_artefact < 1.0 and acc.top1_artefact == pytest.approx(acc.top1_float, abs=1 / 256)
    assert res.to_dict()["top1_artefact"] == acc.top1_artefact


def test_a_drop_beyond_max_drop_fails_and_writes_nothing(tiny_model, real_images, example, tmp_path: Path) -> None:
    import edgeslim

    q = edgeslim.quantize(tiny_model, (example,), "int8", calibration=[(real_images, torch.zeros(128))])
    # the quantized model against a (made-up) perfect float ancestor: a drop of ~45 points
    with pytest.raises(ExportAccuracyError, match=r"loses \d+\.\d\d pt of top-1 accuracy .* vs 100\.00 % \(lineage\)") as err:
        export(q, "onnx", tmp_path / "q.onnx", example, eval_data=_eval(), float_top1=1.0)
    assert err.value.check.drop_pt > 1.0 and not err.value.check.passed
    assert not list(tmp_path.iterdir())
    # the user can accept the drop, and the report keeps the numbers
    res = export(q, "onnx", tmp_path / "q.onnx", example, eval_data=_eval(), float_top1=1.0, max_drop=50.0)
    assert res.accuracy is not None and res.accuracy.passed and res.accuracy.drop_pt == pytest.approx(
        100 * (1.0 - res.accuracy.top1_artefact))
    # the float ancestor itself, measured: the int8 artefact is within a point of it
    ok = export(q, "onnx", tmp_path / "q2.onnx", example, eval_data=_eval(), float_model=tiny_model)
    assert ok.accuracy is not None and ok.accuracy.float_source == "measured" and abs(ok.accuracy.drop_pt) <= 1.0
