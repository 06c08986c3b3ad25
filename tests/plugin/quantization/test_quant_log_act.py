"""log2 activations: the snap, the fake-quant (PTQ and QAT), exact conversion, save/load, ONNX."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import edgeslim
from edgeslim.data import evaluate
from edgeslim.plugin.quantization import QuantConfig, quantize
from edgeslim.plugin.quantization.api import convert, prepare_qat
from edgeslim.plugin.quantization.errors import QuantConfigError
from edgeslim.plugin.quantization.log_act import Log2ActFakeQuantize, exponents, log2_snap

X = torch.zeros(2, 3, 32, 32)


def test_snap_gives_powers_of_two_zero_and_saturation() -> None:
    x = torch.tensor([0.0, 1e-6, 0.24, 0.26, -0.5, 0.7, 1.0, 3.0, -9.0])
    y = log2_snap(x, torch.tensor(1.0), torch.tensor(-6.0))
    nz = y[y != 0].abs()
    assert torch.equal(torch.exp2(torch.round(torch.log2(nz))), nz)  # every non-zero level is a power of two
    assert y[0] == 0 and y[1] == 0  # below 2^-6.5: zero
    assert y[2] == 0.25 and y[3] == 0.25 and y[4] == -0.5
    assert y[5] == 0.5 and y[6] == 1.0  # log-domain rounding: log2(0.7) = -0.51 -> 2^-1
    assert y[7] == 1.0 and y[8] == -1.0  # saturates at ±top


def test_bits_and_signedness_set_the_exponent_count() -> None:
    assert exponents(4, signed=False) == 15 and exponents(4, signed=True) == 7 and exponents(5, signed=True) == 15
    with pytest.raises(QuantConfigError, match=r"2\.\.5 bits"):
        QuantConfig.from_spec("log2:4/log2:6")
    with pytest.raises(QuantConfigError, match="activation part"):
        QuantConfig.from_spec("log2:4/b7")


def test_fake_quant_ptq_observes_then_snaps_with_a_straight_through_gradient() -> None:
    fq = Log2ActFakeQuantize(bits=4)
    x = torch.rand(4, 100) * 3
    assert torch.equal(fq(x), x)  # observing in PTQ: pass-through
    assert fq.signed is False and int(fq.kmin) == -14
    fq.disable_observer()
    xr = x.clone().requires_grad_(True)
    y = fq(xr)
    levels = torch.unique(y.detach())
    assert levels.numel() <= 16
    y.sum().backward()
    assert torch.equal(xr.grad, (x <= fq.top).float())  # STE inside the range, zero where saturated
    scale, zp = fq.calculate_qparams()
    assert float(scale) == pytest.approx(float(fq.top) * 2.0**-14) and int(zp) == 0


def test_ptq_converts_exactly_and_keeps_most_accuracy(resnet18_fmnist: nn.Module, calib_256, test_loader_1k, fp_top1_resnet_1k: float, tmp_path: Path) -> None:
    res = quantize(resnet18_fmnist, X, "int8/log2:5", calibration=calib_256)
    snaps = [n for n in res.model.graph.nodes if n.target is log2_snap]
    assert len(snaps) > 10
    top1 = evaluate(res.model, test_loader_1k)
    assert top1 > fp_top1_resnet_1k - 0.05, top1  # 5-bit signed log activations: 15 exponents
    # the int16 QDQ after each snap is exact: decoding the snap's output changes nothing
    x = next(iter(test_loader_1k))[0][:8]
    out = res.model(x)
    edgeslim.save(res.model, tmp_path / "q.pt")
    assert torch.equal(edgeslim.load(tmp_path / "q.pt")(x), out)


def test_onnx_export_of_log2_activations_runs_in_onnxruntime(resnet18_fmnist: nn.Module, calib_256, tmp_path: Path) -> None:
    from edgeslim.exporters import export

    res = quantize(resnet18_fmnist, X, "log2:4/log2:5", calibration=calib_256)
    out = export(res, "onnx", tmp_path / "q.onnx", X[:1], verify_samples=16)
    assert out.verification is not None and out.verification.top1_agreement == 1.0
    assert out.quant == "log2:4/log2:5"


def test_qat_moves_top_and_converts(resnet18_fmnist: nn.Module, calib_256) -> None:
    p = prepare_qat(resnet18_fmnist, X, "int8/log2:4")
    mods = [m for m in p.modules() if isinstance(m, Log2ActFakeQuantize)]
    assert mods and all(m.qat for m in mods)
    opt = torch.optim.SGD(p.parameters(), lr=1e-4)
    for i, (x, y) in enumerate(calib_256):
        loss = torch.nn.functional.cross_entropy(p(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i == 1:
            break
    assert all(float(m.top) > 0 for m in mods)
    res = convert(p)
    assert any(n.target is log2_snap for n in res.model.graph.nodes)
    assert torch.isfinite(res.model(next(iter(calib_256))[0])).all()
