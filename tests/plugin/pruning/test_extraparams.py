"""A layer subclass's own per-output-channel parameters (NFNet's ``gain``) are cut with its channels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import edgeslim
from edgeslim.plugin.pruning.config import PruneConfig
from edgeslim.plugin.pruning.extraparams import extra_params

timm = pytest.importorskip("timm")


class GainConv(nn.Conv2d):
    """A conv whose weight is standardised per output channel and scaled by a learned ``gain`` [out, 1, 1, 1]."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=1)
        self.gain = nn.Parameter(torch.rand(cout, 1, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, eps=1e-5)
        return F.conv2d(x, w.reshape_as(self.weight) * self.gain, self.bias, padding=1)


def _net() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(GainConv(3, 16), nn.ReLU(), GainConv(16, 32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 4)).eval()


def test_gain_is_found_and_cut_with_its_channels(tmp_path: Path) -> None:
    net = _net()
    assert extra_params(net[0]) == ["gain"] and extra_params(nn.Conv2d(3, 4, 1)) == []
    res = edgeslim.prune(net, torch.randn(1, 3, 16, 16), PruneConfig(target="ratio=0.5"))
    a, b = res.model[0], res.model[2]
    assert (a.out_channels, b.out_channels) == (8, 16) and a.gain.shape == (8, 1, 1, 1) and b.gain.shape == (16, 1, 1, 1)
    assert res.summary()["left_whole"] == []
    kept = [i for i in range(16) if any(torch.equal(net[0].weight[i], w) for w in a.weight)]
    torch.testing.assert_close(a.gain, net[0].gain[kept], rtol=0, atol=0)  # the kept channels' own gains
    assert net[0].gain.shape == (16, 1, 1, 1)  # the user's model untouched
    x = torch.randn(2, 3, 16, 16)
    assert res.model(x).shape == (2, 4)
    edgeslim.save(res, tmp_path / "g.pt")
    back = edgeslim.load(tmp_path / "g.pt", base=_net())
    with torch.no_grad():
        assert torch.equal(back(x), res.model(x))


def test_timm_nfnet_reaches_half_its_parameters() -> None:
    torch.manual_seed(0)
    net = timm.create_model("test_nfnet", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    res = edgeslim.prune(net, x, PruneConfig(criterion="l2", target="params=0.5"))
    assert res.summary()["params_fraction"] == pytest.approx(0.5, abs=0.02)
    convs = [m for m in res.model.modules() if extra_params(m) or hasattr(m, "gain")]
    assert convs and all(m.gain.shape[0] == m.out_channels for m in convs)
    assert res.model(x).shape == (1, 10)
