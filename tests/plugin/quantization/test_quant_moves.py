"""A tensor that is only moved (permute, view, reshape) between two int8 ops keeps one scale: the consumer
reuses the producer's observer. Before, the consumer observed the permuted tensor again and a sampled
calibrator picked another scale, which LiteRT's converter refuses on a TRANSPOSE (MaxViT-T)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeslim.plugin.quantization import QuantConfig, quantize

QUANT = "quantized_decomposed.quantize_per_tensor.default"
DEQUANT = "quantized_decomposed.dequantize_per_tensor.default"


class _Partition(nn.Module):
    """MaxViT's shape: a residual add, a window partition (view → permute → reshape), then a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + self.conv(x)
        b, c, h, w = y.shape
        z = y.view(b, c, h // 4, 4, w // 4, 4).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, c)
        z = z + self.fc(torch.nn.functional.layer_norm(z, (c,)))
        return self.head(z.mean(1))


@pytest.mark.parametrize("calibrator", ["mse", "percentile", "minmax"])
def test_moved_tensor_keeps_its_scale(calibrator: str) -> None:
    torch.manual_seed(0)
    data = [(torch.randn(4, 8, 16, 16), torch.zeros(4)) for _ in range(3)]
    r = quantize(_Partition().eval(), torch.zeros(1, 8, 16, 16), QuantConfig.from_spec("int8", calibrator=calibrator), calibration=data)
    nodes = list(r.model.graph.nodes)
    permute = next(n for n in nodes if n.target == torch.ops.aten.permute.default)
    # the permute runs between a dequantize and a quantize of one scale and zero point: the converters fold it to int8
    src = permute.args[0]
    while str(src.target) != DEQUANT:  # the view before it is carried the same way
        assert src.target in (torch.ops.aten.view.default, torch.ops.aten.reshape.default), src.target
        src = src.args[0]
    quants = [u for u in permute.users if str(u.target) == QUANT]
    assert len(quants) == 1, list(permute.users)
    assert src.args[1:3] == quants[0].args[1:3], (src.args, quants[0].args)
    # the add after the partition reads the tensor at that scale: no second quantize with other parameters
    add = next(n for n in nodes if n.target == torch.ops.aten.add.Tensor and n is not nodes[-1] and n.meta.get("val") is not None and n.meta["val"].dim() == 3)
    for arg in add.args:
        q = arg.args[0] if str(arg.target) == DEQUANT else None
        if q is not None and str(q.target) == QUANT and q.args[0].target == torch.ops.aten.reshape.default:
            assert q.args[1:3] == src.args[1:3], (q.args, src.args)
            break
    else:
        raise AssertionError(f"the add does not read the partitioned tensor through one quantize: {add.args}")
    assert r.model(data[0][0]).shape == (4, 3)


class _ChannelsLast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((x[:, :6] + self.conv(x)).permute(0, 2, 3, 1)).mean((1, 2))


def test_input_means_of_a_layer_reading_a_shared_observer() -> None:
    """The linear reads the add's observer through the permute: that observer now runs twice per batch
    (NCHW, then NHWC); the bias correction's input means must still be the linear's, per input feature."""
    from edgeslim.plugin.quantization.api import Mode, calibrate, prepare
    from edgeslim.plugin.quantization.bias_correction import InputMeans

    torch.manual_seed(0)
    model = _ChannelsLast().eval()
    x = torch.randn(4, 8, 5, 7) + torch.arange(8.0).reshape(1, 8, 1, 1)
    prepared = prepare(model, x[:1], QuantConfig.from_spec("int8"), mode=Mode.PTQ)
    means = InputMeans(prepared)
    calibrate(prepared, [(x[:2], torch.zeros(2)), (x[2:], torch.zeros(2))])
    got = means.finish()
    with torch.no_grad():
        y = x[:, :6] + model.conv(x)
    torch.testing.assert_close(got["fc"], y.mean((0, 2, 3)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["conv"], x.mean((0, 2, 3)), atol=1e-4, rtol=1e-4)


class _Departition(nn.Module):
    """MaxViT's grid departition: swapaxes, permute, reshape between two residual adds."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 8, 16, 16]
        b = x.shape[0]
        t = x.reshape(b, 8, 4, 4, 16).permute(0, 2, 3, 4, 1).reshape(b, 16, 16, 8)
        t = t + self.fc(t)
        y = t.swapaxes(1, 2).movedim(3, 1).reshape(b, 8, 16, 16)
        return (y + self.conv(y)).mean((2, 3))


def test_every_move_chain_keeps_one_scale() -> None:
    from edgeslim.plugin.quantization.quantizer import MOVES

    torch.manual_seed(0)
    data = [(torch.randn(4, 8, 16, 16), torch.zeros(4)) for _ in range(3)]
    r = quantize(_Departition().eval(), torch.zeros(1, 8, 16, 16), "int8", calibration=data)
    checked = 0
    for n in r.model.graph.nodes:
        if str(n.target) != QUANT or n.args[0].target not in MOVES:
            continue
        src = n.args[0]
        while src.op == "call_function" and src.target in MOVES:
            src = src.args[0]
        if str(src.target) != DEQUANT:  # moves of a float tensor (the model input): quantized once, after them
            continue
        assert src.args[1:3] == n.args[1:3], (n.name, n.args[1:3], src.args[1:3])
        checked += 1
    ops = {n.target for n in r.model.graph.nodes}
    assert {torch.ops.aten.swapaxes.default, torch.ops.aten.movedim.int} & ops, ops
    assert checked >= 3


class _OneByOneTail(nn.Module):
    """RegNet's tail at 32x32: the trunk ends 1x1, so the global average pool averages single values.
    Wide (4096 channels, like RegNetY-128GF's pruned trunk) so a batch holds more values than a sampled
    calibrator keeps: two observers of the same values then pick slightly different ranges."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4096, 3, stride=32, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4096, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def _pool_scales(model: nn.Module, x: torch.Tensor) -> tuple[tuple[object, ...], tuple[object, ...]]:
    torch.manual_seed(0)
    data = [(torch.randn(16, *x.shape[1:]), torch.zeros(16)) for _ in range(2)]
    r = quantize(model.eval(), x, QuantConfig.from_spec("int8", calibrator="mse"), calibration=data)
    pool = next(n for n in r.model.graph.nodes if n.target == torch.ops.aten.adaptive_avg_pool2d.default)
    assert str(pool.args[0].target) == DEQUANT, pool.args[0].target
    (q,) = (u for u in pool.users if str(u.target) == QUANT)
    return tuple(pool.args[0].args[1:3]), tuple(q.args[1:3])


def test_a_pool_over_a_1x1_map_keeps_its_input_scale() -> None:
    """LiteRT lowers such a pool (with the flatten after it) to one RESHAPE and refuses two scales on it:
    RegNetY-128GF's were 0.4 % apart (two sampled observers of the same values)."""
    before, after = _pool_scales(_OneByOneTail(), torch.zeros(1, 3, 32, 32))
    assert before == after


def test_a_real_global_pool_gets_its_own_scale() -> None:
    """Averaging a 4x4 map narrows the range: its output keeps its own (finer) scale."""
    before, after = _pool_scales(_OneByOneTail(), torch.zeros(1, 3, 128, 128))
    assert after[0] < before[0]
