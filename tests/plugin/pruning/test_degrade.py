"""Check and degrade: groups whose pruning breaks the forward are left whole, named, and the target met elsewhere."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgeslim.plugin.pruning import PruneConfig, Target, prune
from edgeslim.plugin.pruning.targets import NearestPlanError


class _Gate(nn.Module):
    """Scales channels by a constant buffer: a channel count torch-pruning cannot see (not a parameter)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.linspace(0.5, 1.5, channels).view(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class _Hidden(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.gate = _Gate(64)
        self.head = nn.Sequential(nn.Conv2d(64, 64, 1), nn.ReLU())
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.gate(self.body(self.stem(x)))).mean((2, 3)))


@pytest.fixture
def hidden() -> nn.Module:
    torch.manual_seed(0)
    return _Hidden().eval()


def test_breaking_group_left_whole_and_target_met_from_the_others(hidden: nn.Module) -> None:
    x = torch.randn(2, 3, 16, 16)
    ref = copy.deepcopy(hidden.state_dict())
    res = prune(hidden, x, PruneConfig(target=Target.parse("params=0.5")))
    s = res.summary()
    assert [d["module"] for d in s["left_whole"]] == ["body.0"]
    reason = s["left_whole"][0]["reason"]
    assert "module 'gate' (_Gate) fails with RuntimeError" in reason and "must match the size" in reason
    assert s["target_met"] is True and abs(s["params_fraction"] - 0.5) <= 0.02 * 0.5
    assert res.model.body[0].out_channels == 64 and res.model.stem[0].out_channels < 32
    assert res.model.head[0].out_channels < 64
    assert res.model(x).shape == (2, 10)
    assert all(torch.equal(v, ref[k]) for k, v in hidden.state_dict().items())  # the user's model is untouched


def test_nothing_left_whole_is_an_empty_list(hidden: nn.Module) -> None:
    x = torch.randn(1, 3, 16, 16)
    res = prune(hidden, x, PruneConfig(target=Target.parse("ratio=0.3"), ignored_layers=("body.0", "fc")))
    assert res.summary()["left_whole"] == []


def test_target_unreachable_without_the_broken_group_offers_the_nearest(hidden: nn.Module) -> None:
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(NearestPlanError, match=r"nearest reachable plan keeps 0\.1\d\d of the original params "
                       r"\(wanted 0\.050 .*left whole because pruning them broke the forward: body\.0\).*"
                       r"--accept-nearest") as info:
        prune(hidden, x, PruneConfig(target=Target.parse("params=0.05")))
    assert 0.1 < info.value.nearest < 0.2
    res = prune(hidden, x, PruneConfig(target=Target.parse("params=0.05"), accept_nearest=True))
    s = res.summary()
    assert s["target_met"] is False and [d["module"] for d in s["left_whole"]] == ["body.0"]
    assert s["params_fraction"] == pytest.approx(info.value.nearest)


class _TwoHidden(nn.Module):
    """Four convs; the first and third feed a hidden channel count, the second and fourth prune fine."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.g1 = nn.Conv2d(3, 16, 3, padding=1), _Gate(16)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.c3, self.g3 = nn.Conv2d(32, 32, 3, padding=1), _Gate(32)
        self.c4 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.g1(self.c1(x)))
        x = torch.relu(self.g3(self.c3(torch.relu(self.c2(x)))))
        return self.fc(torch.relu(self.c4(x)).mean((2, 3)))


def test_bisection_keeps_the_other_half_whole_while_it_searches_one() -> None:
    # two broken groups in different halves: searching one half with the other half pruned blamed every group
    torch.manual_seed(0)
    model = _TwoHidden().eval()
    x = torch.randn(1, 3, 16, 16)
    res = prune(model, x, PruneConfig(target=Target.parse("params=0.6")))
    s = res.summary()
    assert sorted(d["module"] for d in s["left_whole"]) == ["c1", "c3"]
    assert all("(only with the other groups listed)" not in d["reason"] for d in s["left_whole"])
    assert s["target_met"] is True and abs(s["params_fraction"] - 0.6) <= 0.02 * 0.6
    assert res.model.c1.out_channels == 16 and res.model.c3.out_channels == 32
    assert res.model.c2.out_channels < 32 and res.model.c4.out_channels < 64
    assert res.model(x).shape == (1, 10)
