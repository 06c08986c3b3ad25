import copy

import pytest
import torch
import torchvision
from torch import nn

from edgeslim.data import evaluate
from edgeslim.errors import ConfigError, TargetUnreachableError
from edgeslim.plugin.pruning import Allocation, LayerRule, PruneConfig, Target, prune


def test_resnet18_params_target_within_2pct_and_input_untouched(resnet18_fmnist: nn.Module, x32: torch.Tensor) -> None:
    before = copy.deepcopy(resnet18_fmnist.state_dict())
    res = prune(resnet18_fmnist, x32, PruneConfig(criterion="l1", target=Target.parse("params=0.5")))
    frac = res.after.params / res.before.params
    assert abs(frac - 0.5) <= 0.02 * 0.5
    assert res.before.params == 11_181_642
    assert res.after.bytes < 0.52 * res.before.bytes and res.after.macs < res.before.macs
    assert res.model.fc.out_features == 10 and res.model.fc.in_features < 512  # head kept, its input pruned
    for k, v in resnet18_fmnist.state_dict().items():  # the caller's model is untouched
        assert torch.equal(v, before[k])
    rows = {r["layer"]: r for r in res.layers}
    assert rows["layer1.0.conv1"]["out_before"] == 64 and rows["layer1.0.conv1"]["out_after"] < 64
    # residual adds stay consistent: all convs feeding layer1's adds have the same width
    assert res.model.conv1.out_channels == res.model.layer1[0].conv2.out_channels == res.model.layer1[1].conv2.out_channels
    assert res.model(x32).shape == (1, 10)


def test_sensitivity_allocation_keeps_accuracy_on_real_data(
    resnet18_fmnist: nn.Module, x32: torch.Tensor, test_loader_1k, train_loader_small
) -> None:
    cfg = PruneConfig(criterion="l1", target=Target.parse("params=0.5"), data_batches=2, sensitivity_ratios=(0.3, 0.6, 0.8))
    uniform = prune(resnet18_fmnist, x32, cfg, data=train_loader_small)
    sens = prune(resnet18_fmnist, x32, cfg.with_(allocation=Allocation.SENSITIVITY), data=train_loader_small)
    assert abs(sens.after.params / sens.before.params - 0.5) <= 0.01
    acc_u, acc_s = evaluate(uniform.model, test_loader_1k), evaluate(sens.model, test_loader_1k)
    # Before any fine-tuning: uniform 50 % params destroys the model; sensitivity allocation does not.
    assert acc_s >= 0.88, acc_s
    assert acc_s > acc_u + 0.3
    assert sens.sensitivity is not None and len(sens.sensitivity.groups()) == 12  # ResNet-18's channel groups


def test_ratio_target_round_to_and_layer_rules(small_net: nn.Module, x32: torch.Tensor) -> None:
    res = prune(small_net, x32, PruneConfig(target=Target.parse("ratio=0.4"), round_to=8))
    assert res.model.a[0].out_channels == 16  # 32 * 0.6 = 19.2 -> rounded to a multiple of 8
    cfg = PruneConfig(target=Target.parse("ratio=0.5"), layer_rules=(LayerRule("stem.0", ratio=0.25),))
    res = prune(small_net, x32, cfg)
    assert res.model.a[0].out_channels == 16
    assert res.model.stem[0].out_channels == 12  # its own ratio


def test_macs_and_bytes_targets(small_net: nn.Module, x32: torch.Tensor) -> None:
    res = prune(small_net, x32, PruneConfig(target=Target.parse("macs=0.4"), tolerance=0.05))
    assert abs(res.after.macs / res.before.macs - 0.4) <= 0.05 * 0.4
    goal = 0.6 * res.before.bytes
    res = prune(small_net, x32, PruneConfig(target=Target(kind="bytes", value=goal), tolerance=0.05))
    assert abs(res.after.bytes / goal - 1) <= 0.05


def test_unreachable_target_says_best(small_net: nn.Module, x32: torch.Tensor) -> None:
    with pytest.raises(TargetUnreachableError, match=r"nearest reachable plan keeps 0\.\d+ of the original params"):
        prune(small_net, x32, PruneConfig(target=Target.parse("params=0.01"), max_layer_ratio=0.5))


def test_bad_input_fails_before_work(small_net: nn.Module, x32: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="needs data"):
        prune(small_net, x32, PruneConfig(criterion="taylor"))
    with pytest.raises(Exception, match="unknown importance criterion 'l3'"):
        prune(small_net, x32, PruneConfig(criterion="l3"))
    with pytest.raises(ConfigError, match="example_inputs"):
        prune(small_net, [x32], PruneConfig())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="matches no module"):
        prune(small_net, x32, PruneConfig(ignored_layers=("classifier",)))


class _Einsum(nn.Module):
    def __init__(self, op: str = "einsum") -> None:
        super().__init__()
        self.op = op
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.w = nn.Parameter(torch.randn(16, 16))
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "einsum":
            x = torch.einsum("bchw,cd->bdhw", self.c1(x), self.w)
        else:  # tensordot: torch-pruning 1.6 cannot map channels through it
            x = torch.tensordot(self.c1(x), self.w, dims=([1], [0])).permute(0, 3, 1, 2)
        return self.fc(self.c2(x).mean((2, 3)))


def test_einsum_channels_are_kept_whole_and_the_rest_prunes(x32: torch.Tensor) -> None:
    # einsum reshapes through a 5-D view, which the graph treats like a channel shuffle: the
    # channels it mixes (c1's outputs, w) stay whole, c2 still prunes, the pruned model runs
    m = _Einsum()
    pruned = prune(m, x32, PruneConfig(target=Target.parse("ratio=0.5"))).model
    assert pruned.c1.out_channels == 16 and tuple(pruned.w.shape) == (16, 16)
    assert pruned.c2.out_channels == 8 and pruned.fc.in_features == 8
    assert pruned(x32).shape == (x32.shape[0], 10)


def test_group_breaking_the_forward_is_left_whole_and_named(x32: torch.Tensor) -> None:
    # torch-pruning cannot map channels through tensordot: pruning c1 breaks the forward. The group is
    # left whole (named, with the op's message), c2 still prunes, the model is untouched
    m = _Einsum("tensordot")
    ref = copy.deepcopy(m.state_dict())
    res = prune(m, x32, PruneConfig(target=Target.parse("ratio=0.5")))
    left = res.summary()["left_whole"]
    assert [d["module"] for d in left] == ["c1"]
    assert "contracted dimensions need to match" in left[0]["reason"] and "after module 'c1'" in left[0]["reason"]
    assert res.model.c1.out_channels == 16 and res.model.c2.out_channels == 8
    assert res.model(x32).shape == (x32.shape[0], 10)
    assert all(torch.equal(v, ref[k]) for k, v in m.state_dict().items())
    m2 = _Einsum("tensordot")
    res2 = prune(m2, x32, PruneConfig(target=Target.parse("ratio=0.5"), inplace=True))
    assert res2.model is m2 and m2.c1.out_channels == 16 and m2.c2.out_channels == 8
    assert [d["module"] for d in res2.summary()["left_whole"]] == ["c1"]


def test_inplace(small_net: nn.Module, x32: torch.Tensor) -> None:
    res = prune(small_net, x32, PruneConfig(target=Target.parse("ratio=0.5"), inplace=True))
    assert res.model is small_net and small_net.a[0].out_channels == 16


class _Shared(nn.Module):
    """One conv module applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.shared(torch.relu(self.c1(x))))
        return self.fc(self.bn(self.shared(x)).mean((2, 3)))


def test_shared_module(x32: torch.Tensor) -> None:
    res = prune(_Shared(), x32, PruneConfig(target=Target.parse("ratio=0.5")))
    m = res.model
    assert m.shared.in_channels == m.shared.out_channels == m.c1.out_channels == 8
    assert m(x32).shape == (1, 10)


def test_depthwise_mobilenet_v2(mobilenet_v2_fmnist: nn.Module, x32: torch.Tensor) -> None:
    res = prune(mobilenet_v2_fmnist, x32, PruneConfig(target=Target.parse("params=0.6")))
    assert abs(res.after.params / res.before.params - 0.6) <= 0.012
    for m in res.model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels
    assert res.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
def test_concat_densenet121() -> None:
    m = torchvision.models.densenet121(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    res = prune(m, x, PruneConfig(target=Target.parse("ratio=0.3")))
    assert res.after.params < 0.7 * res.before.params
    assert res.model(x).shape == (1, 10)
    assert res.model.classifier.in_features < 1024  # concatenated channels pruned through the cat


@pytest.mark.parametrize("criterion", ["taylor", "activation", "apoz", "bn_scale", "random"])
def test_each_criterion_prunes_resnet(criterion: str, resnet18_fmnist: nn.Module, x32: torch.Tensor, train_loader_small) -> None:
    res = prune(resnet18_fmnist, x32, PruneConfig(criterion=criterion, target=Target.parse("ratio=0.3"), data_batches=1),
                data=train_loader_small)
    assert 0.4 < res.after.params / res.before.params < 0.6
