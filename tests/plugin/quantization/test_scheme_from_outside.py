"""A weight scheme added from outside edgeslim: one ``register_scheme`` call, then every step of the chain.

The ternary scheme below lives in this test module only. Registering it is all it takes for the
spec parser, ``edgeslim.quantize``, ``edgeslim.save``/``edgeslim.load`` and the ONNX exporter
(codes + codebook, verified in ONNX Runtime) to accept ``ternary:2``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import edgeslim
from edgeslim.errors import SpecError
from edgeslim.exporters.config import Precision, QuantSpec
from edgeslim.plugin.quantization.schemes import (
    SCHEMES,
    WEIGHT_SCHEMES,
    QParams,
    SchemeKind,
    dequantize,
    register_scheme,
)
from edgeslim.plugin.quantization.schemes.base import INT8_QMAX, channels_view, finish
from edgeslim.spec import Lowering, parse_spec

NAME = "ternary-test"


class TernaryScheme:
    """Ternary weights ``{-t, 0, +t}`` per output channel, ``t`` = mean |w| above ``0.7·mean|w|`` (TWN)."""

    def quantize(self, w: torch.Tensor, bits: int, *, per_channel: bool = True, **options: Any) -> tuple[torch.Tensor, QParams]:
        wc = channels_view(w, per_channel)
        a = wc.abs()
        big = a > 0.7 * a.mean(dim=1, keepdim=True)
        t = ((a * big).sum(dim=1) / big.sum(dim=1).clamp_min(1)).clamp_min(1e-12)
        levels = torch.tensor([-INT8_QMAX, 0, INT8_QMAX], dtype=torch.float32).expand(wc.shape[0], -1)
        return finish(w, wc, t / INT8_QMAX, levels, INT8_QMAX, bits)

    def dequantize(self, codes: torch.Tensor, params: QParams) -> torch.Tensor:
        return dequantize(codes, params)


if NAME not in SCHEMES:  # the registries are process-wide; the module may be imported once per worker
    register_scheme(NAME, kind=SchemeKind.CODED, bits=(2, 2))(TernaryScheme)


def _model() -> nn.Module:
    """A small conv net (shapes only: the checks are exactness and agreement, not accuracy)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


def test_the_registered_scheme_is_declared_for_the_parser_and_the_exporters() -> None:
    info = WEIGHT_SCHEMES.get(NAME)
    assert (info.kind, info.min_bits, info.max_bits) == (SchemeKind.CODED, 2, 2)
    assert info.lowers_to("onnx") is Lowering.CODES and info.lowers_to("tflite") is Lowering.QDQ
    assert parse_spec(f"{NAME}:2/a16").label == f"{NAME}:2/a16"
    with pytest.raises(SpecError, match=f"{NAME} weights take 2..2 bits, got '3'"):
        parse_spec(f"{NAME}:3")
    q = QuantSpec.parse(f"{NAME}:2")
    assert (q.precision, q.scheme, q.bits) == (Precision.CODED, NAME, 2)


def test_quantize_save_load_and_onnx_export_with_an_outside_scheme(tmp_path: Path, calib_256: Any,
                                                                    test_images: torch.Tensor) -> None:
    from edgeslim.plugin.quantization.saved import load_result

    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.zeros(2, 3, 32, 32)
    calib = [next(iter(calib_256))]
    res = edgeslim.quantize(model, (x,), f"{NAME}:2", calibration=calib)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model is untouched
    assert res.config.name == f"{NAME}:2" and set(res.coded_weights) == {"0", "3", "7"}
    for name, cw in res.coded_weights.items():
        rows = cw.decode().reshape(cw.codes.shape[0], -1)
        assert max(int(torch.unique(r).numel()) for r in rows) <= 3, name  # ternary: -t, 0, +t per channel

    path = edgeslim.save(res, tmp_path / "t.pt")
    loaded = edgeslim.load(path, base=_model())  # a custom architecture: the load names its class
    assert torch.equal(loaded(test_images), res.model(test_images))
    back = load_result(path, base=_model())
    assert back.config == res.config and set(back.coded_weights) == set(res.coded_weights)
    for name, cw in res.coded_weights.items():
        assert torch.equal(back.coded_weights[name].decode(), cw.decode()), name

    out = edgeslim.export(back, "onnx", tmp_path / "t.onnx", test_images[:1], verify_inputs=test_images)
    assert out.quant == f"{NAME}:2" and out.metadata["coded"]["lowered"] == 3
    assert out.verification is not None and out.verification.cosine > 0.999
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(out.path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: test_images.numpy()})[0]
    want = res.model(test_images).detach().numpy()
    assert np.array_equal(got.argmax(1), want.argmax(1))
    assert float(np.abs(got - want).max()) <= 0.05 * float(np.abs(want).max())
