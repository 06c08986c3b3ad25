"""Targets that cannot be met within tolerance: the nearest reachable plan is reported, and used with accept_nearest."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from torch import nn

from edgeslim.errors import ConfigError
from edgeslim.pipelines.recipe import Recipe
from edgeslim.plugin.pruning import PruneConfig, Target, prune
from edgeslim.plugin.pruning.config import TargetKind
from edgeslim.plugin.pruning.targets import NearestPlanError


def _kept(message: str) -> float:
    found = re.search(r"the nearest reachable plan keeps (\d\.\d{3}) of the original params", message)
    assert found, message
    return float(found.group(1))


def test_ignored_layers_floor_reports_and_accepts_the_nearest(small_net: nn.Module, x32: torch.Tensor) -> None:
    cfg = PruneConfig(target=Target.parse("params=0.05"), ignored_layers=("fc", "stem.0"))
    with pytest.raises(NearestPlanError) as info:
        prune(small_net, x32, cfg)
    msg = str(info.value)
    assert msg.startswith("params=0.05 cannot be reached for SmallNet: the nearest reachable plan keeps 0.")
    assert "(wanted 0.050 of the original params; max_layer_ratio=0.9, round_to=None, ignored layers: stem.0, fc)" in msg
    assert "rerun with --accept-nearest (accept_nearest: true in a config or recipe) to use it" in msg
    assert "ignore fewer layers" in msg
    err = info.value
    assert err.kind is TargetKind.PARAMS and err.wanted == 0.05 and 0.05 < err.nearest < 0.5
    assert _kept(msg) == round(err.nearest, 3)
    res = prune(small_net, x32, cfg.with_(accept_nearest=True))
    s = res.summary()
    assert s["target_met"] is False and s["nearest"]["value"] == err.nearest  # exactly what the error offered
    assert s["params_fraction"] == err.nearest and s["nearest"]["params"] == res.after.params
    assert s["config"]["accept_nearest"] is True
    # ignoring fewer layers reaches further, as the message says
    assert prune(small_net, x32, cfg.with_(accept_nearest=True, ignored_layers=("fc",))).after.params < res.after.params


def test_rounded_widths_miss_the_tolerance_and_accept_the_nearest(small_net: nn.Module, x32: torch.Tensor) -> None:
    """round_to=16 on 16/32-channel layers: only a few widths exist, none within ±1 % of 60 % of the params."""
    cfg = PruneConfig(target=Target.parse("params=0.6"), round_to=16, tolerance=0.01)
    with pytest.raises(NearestPlanError, match=r"cannot be reached for SmallNet within ±1% \(channel widths move in "
                                               r"steps\): the nearest reachable plan keeps 0\.\d{3} .* round_to=16, "
                                               r".*try round_to=None or a larger tolerance") as info:
        prune(small_net, x32, cfg)
    res = prune(small_net, x32, cfg.with_(accept_nearest=True))
    assert res.summary()["nearest"]["value"] == info.value.nearest == res.after.params / res.before.params
    assert res.after.params < res.before.params  # a plan that prunes (the largest ratio alone prunes nothing here)
    assert all(m.out_channels % 16 == 0 for m in res.model.modules() if isinstance(m, nn.Conv2d))


def test_a_met_target_says_so(small_net: nn.Module, x32: torch.Tensor) -> None:
    cfg = PruneConfig(target=Target.parse("params=0.5"), tolerance=0.05, accept_nearest=True)
    s = prune(small_net, x32, cfg).summary()
    assert s["target_met"] is True and "nearest" not in s and abs(s["params_fraction"] - 0.5) <= 0.05 * 0.5
    assert "target_met" not in prune(small_net, x32, PruneConfig(target=Target.parse("ratio=0.3"))).summary()


def test_accept_nearest_round_trips_through_json_yaml_and_recipes() -> None:
    cfg = PruneConfig(target=Target.parse("macs=0.3"), accept_nearest=True)
    assert PruneConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert PruneConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg
    recipe = Recipe.from_dict(yaml.safe_load("model: resnet18-fmnist\nprune: {target: params=0.05, accept_nearest: true}"))
    assert recipe.prune is not None and recipe.prune.accept_nearest is True
    assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml())).prune == recipe.prune
    with pytest.raises(ConfigError, match="accept_nearest must be true or false, got 'yes'"):
        PruneConfig(accept_nearest="yes")  # type: ignore[arg-type]


def test_group_conv_widths_that_jump_past_the_target_are_mixed_per_group() -> None:
    """RegNet's group convs: a uniform ratio moves every group of one width by a whole group at once
    (regnet_y_400mf: 0.465 of the params, outside ±2 %); mixing two ratios across groups lands within ±1 %."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.regnet_y_400mf(num_classes=10).eval()
    res = prune(model, torch.randn(1, 3, 32, 32), PruneConfig(criterion="l1", target=Target.parse("params=0.5")))
    assert abs(res.after.params / res.before.params - 0.5) <= 0.01 * 0.5 + 1e-9
    assert res.summary()["target_met"] is True
    assert res.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
