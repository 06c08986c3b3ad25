"""Train/eval switches of exported graphs keep each batch norm's arguments (plugin/quantization/modes.py).

Weight standardisation is a batch norm without running statistics over the weight
(``F.batch_norm(w.reshape(1, out, -1), None, None, training=True)``: timm's StdConv2d,
ScaledStdConv2d; NFNet, ResNetV2-BiT, ViT-hybrid). torchao's eval rewrite turned it into an eval
batch norm PyTorch refuses (``running_mean must be defined in evaluation mode``) and reset every
batch norm's eps to 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim, export

from edgeslim.plugin.quantization import QATSchedule, convert, prepare_qat, quantize
from edgeslim.plugin.quantization.modes import set_batch_norm_training, to_eval, to_train

BN = torch.ops.aten.batch_norm.default


class _WSConv(nn.Conv2d):
    """A weight-standardised convolution written by hand (eps 1e-6, as timm's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class _Net(nn.Module):
    """Two standardised convs, a batch norm after an add (not folded into a conv, eps 0.1), a linear head."""

    def __init__(self, bn: bool) -> None:
        super().__init__()
        self.c1 = _WSConv(3, 8, 3, padding=1)
        self.c2 = _WSConv(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8, eps=0.1) if bn else nn.Identity()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.c1(x))
        y = F.relu(self.bn(y + self.c2(y)))
        return self.fc(y.mean((2, 3)))


def _net(bn: bool = True) -> nn.Module:
    """With ``bn``, a batch norm left in the graph makes torchao's convert run its conv-BN QAT folding (~50 s)."""
    torch.manual_seed(0)
    net = _Net(bn)
    if not bn:
        return net.eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.01, 0.2)  # small variances: eps 0.1 vs 1e-5 changes the output a lot
    return net.eval()


def _bn_args(gm: torch.fx.GraphModule) -> list[tuple[bool, float, float]]:
    """(training, momentum, eps) of every batch-norm node, in graph order."""
    return [(n.args[5], n.args[6], n.args[7]) for n in gm.graph.nodes if n.target == BN]


def _exported(net: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    return export(net, (x,), dynamic_shapes=({0: Dim("b")},)).module()


def test_eval_keeps_stat_free_batch_norm_and_eps() -> None:
    net, x = _net(), torch.randn(2, 3, 12, 12)
    gm = _exported(net, x)
    assert _bn_args(gm) == [(True, 0.0, 1e-6), (True, 0.0, 1e-6), (False, 0.1, 0.1)]
    to_eval(gm)
    assert _bn_args(gm) == [(True, 0.0, 1e-6), (True, 0.0, 1e-6), (False, 0.1, 0.1)]
    torch.testing.assert_close(gm(x), net(x), rtol=0, atol=1e-6)
    to_train(gm)
    assert _bn_args(gm) == [(True, 0.0, 1e-6), (True, 0.0, 1e-6), (True, 0.1, 0.1)]
    assert set_batch_norm_training(gm, False) == 1  # only the batch norm with running statistics switches
    torch.testing.assert_close(gm(x), net(x), rtol=0, atol=1e-6)


def test_torchao_rewrite_is_what_breaks() -> None:
    """The reason for modes.py: torchao 0.18's own switch (if this starts passing, modes.py may go)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval

    gm = _exported(_net(), torch.randn(2, 3, 12, 12))
    move_exported_model_to_eval(gm)
    assert _bn_args(gm) == [(False, 0.1, 1e-5)] * 3
    with pytest.raises(RuntimeError, match="running_mean must be defined in evaluation mode"):
        gm(torch.randn(2, 3, 12, 12))


def _sqnr(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - got).pow(2).sum()))


def test_ptq_of_weight_standardised_convs() -> None:
    net, x = _net(bn=False), torch.randn(16, 3, 12, 12)
    r = quantize(net, x[:1], "int8", calibration=[x])
    # the standardisation only reads parameters: convert folds it into the int8 weight constants
    assert not [n for n in r.model.graph.nodes if n.target == BN]
    convs = [n for n in r.model.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    for conv in convs:  # each weight: dequantize_per_channel of an int8 constant
        dq = conv.args[1]
        assert "dequantize_per_channel" in str(dq.target) and dq.args[0].op == "get_attr", conv.args
        assert getattr(r.model, dq.args[0].target).dtype == torch.int8
    assert len(convs) == 2
    assert [layer.name for layer in r.report.layers] == ["c1", "c2", "fc"]
    assert [layer.weight_bits for layer in r.report.layers] == [8, 8, 8]
    assert min(layer.sqnr_db for layer in r.report.layers) > 30.0  # against the standardised weights
    assert _sqnr(net(x), r.model(x)) > 25.0


def test_timm_std_convs_quantize() -> None:
    """timm's own StdConv2d and ScaledStdConv2d (not written for them), eps 1e-8 / 1e-6."""
    from timm.layers import ScaledStdConv2d, StdConv2d

    torch.manual_seed(0)
    net = nn.Sequential(StdConv2d(3, 8, 3, padding=1, eps=1e-8), nn.ReLU(), ScaledStdConv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    x = torch.randn(16, 3, 12, 12)
    r = quantize(net, x[:1], "int8", calibration=[x])
    assert _sqnr(net(x), r.model(x)) > 25.0


@pytest.mark.slow
def test_qat_of_weight_standardised_convs() -> None:
    net, x = _net(), torch.randn(8, 3, 12, 12)
    qm = prepare_qat(net, x[:1], "int8")
    assert _bn_args(qm) == [(True, 0.0, 1e-6), (True, 0.0, 1e-6), (True, 0.1, 0.1)]
    opt = torch.optim.SGD(qm.parameters(), lr=1e-3)
    sched = QATSchedule(freeze_bn_after=1)
    for _ in range(2):
        loss = qm(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step(qm)
    assert _bn_args(qm) == [(True, 0.0, 1e-6), (True, 0.0, 1e-6), (False, 0.1, 0.1)]  # frozen, eps kept
    qm.eval()
    qm.train()
    assert _bn_args(qm)[2] == (False, 0.1, 0.1)  # stays frozen through train()
    r = convert(qm)
    assert r.model(x).shape == (8, 4)
    assert [layer.weight_bits for layer in r.report.layers] == [8, 8, 8]


@pytest.mark.slow
def test_std_conv_artefacts_verify(tmp_path: Path) -> None:
    """int8 of timm's ScaledStdConv2d in ONNX Runtime and the fp32 model in LiteRT, both verified on real images."""
    from timm.layers import ScaledStdConv2d, StdConv2d

    import edgeslim
    from edgeslim.exporters.base import fashion_inputs

    torch.manual_seed(0)
    net = nn.Sequential(StdConv2d(3, 8, 3, padding=1, eps=1e-8), nn.ReLU(), ScaledStdConv2d(8, 16, 3, stride=2),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    x = torch.zeros(1, 3, 32, 32)
    q = edgeslim.quantize(net, x, "int8", calibration=fashion_inputs(tuple(x.shape), 64, split="train"))
    onnx = edgeslim.export(q, "onnx", tmp_path / "m.onnx", x, verify_samples=64)
    assert onnx.verification is not None and onnx.verification.passed and onnx.verification.cosine > 0.99
    tfl = edgeslim.export(net, "tflite", tmp_path / "m.tflite", x, quant="fp32", verify_samples=64)
    assert tfl.verification is not None and tfl.verification.cosine > 0.99999
