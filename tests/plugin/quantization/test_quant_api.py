"""PTQ end to end on the trained references: accuracy on real test images, converted graph, exactness."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from edgeslim.data import evaluate
from edgeslim.models import load
from edgeslim.plugin.quantization import QuantConfig, QuantResult, quantize
from edgeslim.plugin.quantization.api import _dequantized_weights
from edgeslim.plugin.quantization.errors import CalibrationError, UnsupportedOpError

X = torch.zeros(2, 3, 32, 32)


def _ops(gm: torch.fx.GraphModule) -> set[str]:
    return {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}


def test_int8_resnet_accuracy_within_half_a_point(int8_resnet: QuantResult, fp_top1_resnet_1k: float, test_loader_1k: torch.utils.data.DataLoader) -> None:
    fp = fp_top1_resnet_1k
    q = evaluate(int8_resnet.model, test_loader_1k)
    assert fp - q <= 0.005, (fp, q)


def test_int8_converted_graph_is_standard_qdq_with_folded_bn(int8_resnet: QuantResult) -> None:
    ops = _ops(int8_resnet.model)
    assert "quantized_decomposed.quantize_per_tensor.default" in ops
    assert "quantized_decomposed.dequantize_per_channel.default" in ops
    assert not any("batch_norm" in o for o in ops)
    assert isinstance(int8_resnet.model, torch.fx.GraphModule)
    assert int8_resnet.report.mean_sqnr_db > 35
    # int8 weights: one byte per weight plus a float scale per channel
    params = sum(layer.params for layer in int8_resnet.report.layers)
    assert params < int8_resnet.weight_bytes < params * 1.01


def test_dynamic_batch_and_close_to_float(int8_resnet: QuantResult, resnet18_fmnist: nn.Module, test_images: torch.Tensor) -> None:
    out7 = int8_resnet.model(test_images)
    out3 = int8_resnet.model(test_images[:3])
    assert out7.shape == (7, 10) and torch.allclose(out7[:3], out3, atol=1e-5)
    with torch.no_grad():
        ref = resnet18_fmnist(test_images)
    assert torch.equal(out7.argmax(1), ref.argmax(1))


def test_w8a16_is_closer_than_w8a8(int8_resnet: QuantResult, resnet18_fmnist: nn.Module, calib_256: torch.utils.data.DataLoader, test_images: torch.Tensor) -> None:
    r16 = quantize(resnet18_fmnist, X, "w8a16", calibration=calib_256)
    assert "torch.int16" in str([n.args for n in r16.model.graph.nodes if "quantize_per_tensor" in str(n.target)][:1])
    with torch.no_grad():
        ref = resnet18_fmnist(test_images)
    err8 = (int8_resnet.model(test_images) - ref).abs().mean()
    err16 = (r16.model(test_images) - ref).abs().mean()
    assert err16 < err8 * 0.7


def test_log2_converted_weights_equal_fake_quant_and_codes(log2_mbv2: QuantResult, mobilenet_v2_fmnist: nn.Module, test_loader_1k: torch.utils.data.DataLoader) -> None:
    deq = _dequantized_weights(log2_mbv2.model)
    assert set(log2_mbv2.coded_weights) == set(deq) and len(deq) == 53
    for name, cw in log2_mbv2.coded_weights.items():
        assert torch.equal(cw.decode(), deq[name]), name
        assert int(cw.codes.max()) < 16 and cw.bits == 4 and cw.codebook.shape[1] == 15
        step = cw.codebook[:, 8]  # levels: -64..-1, 0, 1..64 (x step)
        ratio = cw.codebook / cw.codebook[:, 8:9].clamp_min(1e-30)
        assert torch.allclose(ratio[:, 8:], torch.tensor([1.0, 2, 4, 8, 16, 32, 64]).expand(len(step), -1), rtol=1e-5)
    assert "features.0.0" in log2_mbv2.coded_weights  # keyed by the fp32 model's module names
    # PTQ of 4-bit log2 weights costs accuracy (QAT recovers it): still far better than chance
    assert evaluate(log2_mbv2.model, test_loader_1k) > 0.5


def test_codebook_4bit_accuracy_within_one_point(resnet18_fmnist: nn.Module, fp_top1_resnet_1k: float, calib_256: torch.utils.data.DataLoader, test_loader_1k: torch.utils.data.DataLoader) -> None:
    r = quantize(resnet18_fmnist, X, "codebook:4", calibration=calib_256)
    assert fp_top1_resnet_1k - evaluate(r.model, test_loader_1k) <= 0.01
    fp_bytes = sum(layer.params for layer in r.report.layers) * 4
    assert r.weight_bytes < fp_bytes / 5  # 4-bit codes + codebooks + scales
    assert len(r.coded_weights) == 21


def test_user_model_is_not_modified(log2_mbv2: QuantResult, mobilenet_v2_fmnist: nn.Module) -> None:
    fresh = load("mobilenet_v2-fmnist").state_dict()  # the fixture model was quantized (log2 baking) already
    assert all(torch.equal(fresh[k], v) for k, v in mobilenet_v2_fmnist.state_dict().items())


def test_empty_calibration_set_is_refused(resnet18_fmnist: nn.Module) -> None:
    with pytest.raises(CalibrationError, match="empty"):
        quantize(resnet18_fmnist, X, "int8", calibration=[])
    with pytest.raises(CalibrationError, match="calibration"):
        quantize(resnet18_fmnist, X, "int8", calibration=None)


class _Blowup(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)) * 1e38 * 1e38)


@pytest.mark.parametrize("calibrator", ["minmax", "percentile"])
def test_inf_during_calibration_names_the_layer(calibrator: str) -> None:
    data = [(torch.rand(2, 3, 8, 8), torch.zeros(2))]
    with pytest.raises(CalibrationError, match="head"):
        quantize(_Blowup(), torch.zeros(2, 3, 8, 8), QuantConfig.from_spec("int8", calibrator=calibrator), calibration=data)


def test_nan_in_the_input_is_refused() -> None:
    x = torch.rand(2, 3, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(CalibrationError, match="NaN"):
        quantize(_Blowup(), torch.zeros(2, 3, 8, 8), "int8", calibration=[(x, torch.zeros(2))])


class _Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(self.conv(x), dim=1)


def test_unsupported_op_warns_and_stays_float_or_fails_in_strict_mode() -> None:
    data = [(torch.rand(2, 3, 8, 8), torch.zeros(2))]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        r = quantize(_Odd(), torch.zeros(2, 3, 8, 8), "int8", calibration=data)
    assert any("cumsum" in str(w.message) for w in seen)
    assert any("cumsum" in op for op in r.left_float)
    with pytest.raises(UnsupportedOpError, match="cumsum"):
        quantize(_Odd(), torch.zeros(2, 3, 8, 8), QuantConfig.from_spec("int8", strict=True), calibration=data)


def test_float_override_keeps_layer_in_float(resnet18_fmnist: nn.Module, calib_256: torch.utils.data.DataLoader) -> None:
    from edgeslim.plugin.quantization.config import FLOAT

    cfg = QuantConfig.from_spec("int8").with_overrides({"fc": FLOAT})
    r = quantize(resnet18_fmnist, X, cfg, calibration=calib_256, max_batches=1)
    deq = _dequantized_weights(r.model)
    assert "fc" not in deq and "layer4.1.conv2" in deq
    fc = next(layer for layer in r.report.layers if layer.name == "fc")
    assert fc.scheme == "float" and fc.bytes == fc.params * 4
