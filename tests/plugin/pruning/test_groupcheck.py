"""Groups torch-pruning cannot prune are left whole and listed; models with graph-tensor caches are copied."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from edgeslim.models import clone
from edgeslim.plugin.pruning import PruneConfig, Target, prune


class _BiasCache(nn.Module):
    """Like timm LeViT's attention: in eval mode a table derived from a parameter is cached on first use."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.table = nn.Parameter(torch.randn(2, channels))
        self.cache: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> _BiasCache:
        super().train(mode)
        self.cache = {}
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            bias = self.table.sum(0)
        else:
            if "cpu" not in self.cache:
                self.cache["cpu"] = self.table.sum(0)  # grad-tracking when the forward runs with autograd on
            bias = self.cache["cpu"]
        return self.conv(x) + bias.view(1, -1, 1, 1)


def _cached_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), _BiasCache(16), nn.Conv2d(16, 32, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


def test_clone_copies_a_module_holding_a_graph_tensor_without_touching_it() -> None:
    net = _cached_net()
    x = torch.randn(1, 3, 8, 8)
    ref = net(x)  # autograd on: the cache holds a non-leaf tensor, which copy.deepcopy refuses
    cached = net[2].cache["cpu"]
    assert not cached.is_leaf
    twin = clone(net)
    assert net[2].cache["cpu"] is cached  # the original keeps its cache
    assert twin[2].cache["cpu"].is_leaf and not twin[2].cache["cpu"].requires_grad
    torch.testing.assert_close(twin(x), ref)


def test_prune_to_half_the_params_after_a_forward_with_autograd_on() -> None:
    net = _cached_net()
    x = torch.randn(1, 3, 8, 8)
    ref = net(x).detach()
    res = prune(net, x, PruneConfig(criterion="l2", target=Target.parse("params=0.5")))
    frac = res.summary()["params_fraction"]
    assert abs(frac - 0.5) <= 0.05, frac
    assert tuple(res.model(torch.randn(2, 3, 8, 8)).shape) == (2, 10)
    torch.testing.assert_close(net(x), ref)  # the user's model is unchanged


class _Multiplier(nn.Module):
    """A grouped conv with two outputs per input channel (groups == in_channels != out_channels), as in fastvit:
    torch-pruning cannot remove its input channels (it fails scoring or cutting them)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.mult = nn.Conv2d(16, 32, 3, padding=1, groups=16)
        self.body = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.body(torch.relu(self.mult(torch.relu(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


def test_group_feeding_a_channel_multiplier_conv_is_left_whole_with_its_reason() -> None:
    torch.manual_seed(0)
    net = _Multiplier().eval()
    x = torch.randn(1, 3, 8, 8)
    res = prune(net, x, PruneConfig(criterion="l2", target=Target.parse("ratio=0.5")))
    left = res.summary()["left_whole"]
    assert left == [{"module": "stem", "reason": "torch-pruning cannot remove input channels of the grouped conv "
                                                   "mult (groups=16, 2 outputs per input channel)"}]
    assert (res.model.stem.out_channels, res.model.mult.out_channels, res.model.body.out_channels) == (16, 16, 32)
    assert tuple(res.model(torch.randn(2, 3, 8, 8)).shape) == (2, 10)


def test_left_whole_is_an_empty_list_for_unstructured_pruning() -> None:
    net = _cached_net()
    res = prune(net, torch.randn(1, 3, 8, 8), PruneConfig(method="unstructured", target=Target.parse("sparsity=0.5")))
    assert res.summary()["left_whole"] == []


class _Scale(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w.view(1, -1, 1, 1)


class _FailingPruner(tp.pruner.BasePruningFunc):
    """A pruning function that raises (as torch-pruning does on layouts it mis-maps)."""

    def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        raise IndexError("index 1 is out of bounds for dimension 0 with size 1")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(layer.w.numel())

    get_in_channels = get_out_channels


def test_group_torch_pruning_raises_on_is_left_whole_and_the_others_meet_the_target() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), _Scale(16), nn.ReLU(), nn.Conv2d(16, 64, 3, padding=1),
                        nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(64, 10)).eval()
    x = torch.randn(1, 3, 8, 8)
    config = PruneConfig(criterion="l2", target=Target.parse("params=0.5"), customized_pruners={_Scale: _FailingPruner()})
    res = prune(net, x, config)
    s = res.summary()
    assert s["left_whole"] == [{"module": "0", "reason": "torch-pruning fails on this group (IndexError: index 1 is "
                                                          "out of bounds for dimension 0 with size 1)"}]
    assert res.model[0].out_channels == 16 and res.model[3].out_channels < 64
    assert s["target_met"] is True and abs(s["params_fraction"] - 0.5) <= 0.02
    assert tuple(res.model(torch.randn(2, 3, 8, 8)).shape) == (2, 10)
