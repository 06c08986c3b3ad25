"""Torch-Pruning's hooks in PruneConfig: the README's "Unusual models" example, serialisation, criterion errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch_pruning as tp
from torch import nn

from edgeslim.errors import ConfigError
from edgeslim.plugin.pruning import PruneConfig, prune
from edgeslim.plugin.pruning.metrics import call

README = Path(__file__).resolve().parents[3] / "README.md"


def _readme_example() -> str:
    text = README.read_text()
    section = text[text.index("### Unusual models"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def test_readme_unusual_models_example_runs() -> None:
    torch.manual_seed(0)
    scope: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(_readme_example(), str(README), "exec"), scope)  # the README's code, as written
    res = scope["res"]
    assert res.model.conv.out_channels == 16
    assert tuple(res.model.scale.w.shape) == (16,) and tuple(res.model.shift.shape) == (1, 16, 1, 1)
    assert res.model.head.in_features == 16 and res.summary()["left_whole"] == []
    assert res.summary()["target_met"] is True
    out = res.model({"image": torch.randn(2, 3, 32, 32)})
    assert out["logits"].shape == (2, 10)
    d = res.summary()["config"]  # the lambdas have no import path: dropped, with a note
    assert d["forward_fn"] is None and d["output_transform"] is None
    assert any("forward_fn" in note for note in d["_dropped"])
    assert d["customized_pruners"] == {"readme_example:Scale": "readme_example:ScalePruner"}
    assert d["unwrapped_parameters"] == [["shift", 1]]


def test_import_paths_round_trip_and_resolve() -> None:
    cfg = PruneConfig(forward_fn="edgeslim.plugin.pruning.metrics:call",
                      customized_pruners={"torch.nn:PReLU": "torch_pruning.pruner.function:PReLUPruner"},
                      unwrapped_parameters=[["pos", 2]], ignored_params=["cls_token"])
    assert cfg.forward_fn is call
    ((layer, pruner),) = cfg.customized_pruners
    assert layer is nn.PReLU and isinstance(pruner, tp.pruner.function.PReLUPruner)
    d = cfg.to_dict()
    assert d["forward_fn"] == "edgeslim.plugin.pruning.metrics:call"
    assert d["customized_pruners"] == {"torch.nn.modules.activation:PReLU": "torch_pruning.pruner.function:PReLUPruner"}
    assert "_dropped" not in d
    again = PruneConfig.from_dict(d)
    assert again.forward_fn is call and again.unwrapped_parameters == (("pos", 2),)
    assert again.ignored_params == ("cls_token",) and again.customized_pruners[0][0] is nn.PReLU


def test_bad_hooks_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"forward_fn: 'nope' is not an import path 'package\.module:name'"):
        PruneConfig(forward_fn="nope")
    with pytest.raises(ConfigError, match=r"cannot import 'edgeslim:missing'"):
        PruneConfig(output_transform="edgeslim:missing")
    with pytest.raises(ConfigError, match=r"unwrapped_parameters entries are \(parameter name, dim\) pairs"):
        PruneConfig(unwrapped_parameters=[("pos",)])
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(1, 3, 8, 8))
    with pytest.raises(ConfigError, match=r"'nope' is not a parameter of Sequential \(parameters: 0\.weight"):
        prune(net, torch.randn(1, 3, 8, 8), PruneConfig(unwrapped_parameters=[("nope", 0)]))
    other = nn.Parameter(torch.zeros(3))
    with pytest.raises(ConfigError, match="a parameter in ignored_params is not a parameter of Sequential"):
        prune(net, torch.randn(1, 3, 8, 8), PruneConfig(ignored_params=[other]))


@pytest.mark.parametrize("method", ["unstructured", "hybrid"])
def test_unstructured_criterion_that_cannot_score_weights_is_an_error(method: str) -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 2))
    with pytest.raises(ConfigError, match=r"criterion 'bn_scale' cannot score single weights for "
                       rf"{method} pruning; use one of \['gradient', 'l1', 'l2', 'magnitude'\]"):
        prune(net, torch.randn(1, 3, 8, 8), PruneConfig(method=method, criterion="bn_scale", sparsity=0.5))
    res = prune(net, torch.randn(1, 3, 8, 8), PruneConfig(method="unstructured", criterion="l1", sparsity=0.5))
    assert res.summary()["sparsity"] == pytest.approx(0.5, abs=0.01)
