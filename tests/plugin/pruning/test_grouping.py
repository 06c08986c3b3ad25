"""edgeslim's bounded torch-pruning group walk: the same groups as torch-pruning's, in linear time."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from edgeslim.plugin.pruning import grouping


class PartialResidual(nn.Module):
    """rexnet's block: the shortcut is added to the first channels of a wider output (slice + cat)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.c_in = c_in
        self.conv = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.cat([y[:, : self.c_in] + x, y[:, self.c_in:]], dim=1)


def chain(blocks: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 1), *[PartialResidual(8 + 2 * i, 10 + 2 * i) for i in range(blocks)])


def groups(model: nn.Module, method: Any, budget: int,
           dg: tp.DependencyGraph | None = None) -> list[list[tuple[int, str, tuple[tuple[int, int], ...]]]]:
    old, old_budget = tp.DependencyGraph.get_pruning_group, grouping.BUDGET
    tp.DependencyGraph.get_pruning_group, grouping.BUDGET = method, budget
    try:
        dg = dg or tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))
        return [[(id(dep.target.module), dep.handler.__name__, tuple(zip(idxs, g[k].root_idxs, strict=True)))
                 for k, (dep, idxs) in enumerate(g)] for g in dg.get_all_groups()]
    finally:
        tp.DependencyGraph.get_pruning_group, grouping.BUDGET = old, old_budget


@pytest.mark.parametrize("budget", [grouping.BUDGET, -1])
def test_same_groups_as_torch_pruning(budget: int) -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))  # one graph: the same group order
    ours = groups(model, grouping.get_pruning_group, budget, dg)
    theirs = groups(model, grouping.ORIGINAL, 0, dg)
    assert len(ours) == len(theirs) == 26
    assert ours == theirs  # own walk within the budget, and the merged walk here: identical, order included


def test_walk_is_bounded_where_torch_pruning_explodes() -> None:
    calls = {"n": 0}
    walk = grouping._walk_merged

    def counting(group: Any) -> None:
        calls["n"] += 1
        walk(group)

    grouping._walk_merged = counting
    try:
        found = groups(chain(24), grouping.get_pruning_group, 50)
    finally:
        grouping._walk_merged = walk
    assert len(found) == 1
    assert calls["n"] >= 1  # the budget ran out on the long chain and the merged walk finished it
    first = {name for _, name, _ in found[0]}
    assert "prune_out_channels" in first
