"""edgeslim's bounded torch-pruning group walk: the same groups as torch-pruning's, in linear time."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

import edgeslim
from edgeslim.plugin.pruning import PruneConfig, grouping


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
    walk = grouping._Walk.merged

    def counting(self: Any, group: Any, *, pairs: bool = True) -> None:
        calls["n"] += 1
        walk(self, group, pairs=pairs)

    grouping._Walk.merged = counting  # type: ignore[method-assign]
    try:
        found = groups(chain(24), grouping.get_pruning_group, 50)
    finally:
        grouping._Walk.merged = walk  # type: ignore[method-assign]
    assert len(found) == 1
    assert calls["n"] >= 1  # the budget ran out on the long chain and the merged walk finished it
    first = {name for _, name, _ in found[0]}
    assert "prune_out_channels" in first


class Cascade(nn.Module):
    """efficientvit_msra's cascaded heads: each head's output is added to the next head's input chunk, and
    ``view`` calls torch-pruning reads as flattens (the head's 3 x 16 channels as 48 = 3 x 16 ...)."""

    def __init__(self, c: int = 32, heads: int = 4, mlp: int = 0) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 1)
        self.heads, self.d = heads, c // heads
        self.qkvs = nn.ModuleList([nn.Conv2d(self.d, 3 * self.d, 1) for _ in range(heads)])
        self.proj = nn.Conv2d(c, c, 1)
        self.mlp = nn.Sequential(nn.Linear(c, mlp), nn.ReLU(), nn.Linear(mlp, c)) if mlp else nn.Identity()
        self.fc = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        b, _, h, w = x.shape
        chunks, outs = x.chunk(self.heads, 1), []
        feat = chunks[0]
        for i, qkv in enumerate(self.qkvs):
            feat = qkv(feat if i == 0 else feat + chunks[i])
            q, k, v = feat.view(b, -1, h, w).split([self.d, self.d, self.d], 1)
            attn = (q.flatten(2).transpose(-2, -1) @ k.flatten(2)).softmax(-1)
            feat = (v.flatten(2) @ attn.transpose(-2, -1)).view(b, self.d, h, w)
            outs.append(feat)
        x = (x + self.proj(torch.cat(outs, 1))).mean((2, 3))
        return self.fc(x + self.mlp(x))


def _tiny_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grouping, "BUDGET", 5)
    monkeypatch.setattr(grouping, "ENTRY_BUDGET", 50)


def test_index_only_walk_reaches_torch_pruning_s_layers_and_indices(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))

    def layers(method: Any) -> list[set[tuple[int, str, tuple[int, ...]]]]:
        tp.DependencyGraph.get_pruning_group = method
        try:
            return [{(id(dep.target.module), dep.handler.__name__, tuple(sorted(idxs))) for dep, idxs in g}
                    for g in dg.get_all_groups()]
        finally:
            tp.DependencyGraph.get_pruning_group = grouping.ORIGINAL

    theirs = layers(grouping.ORIGINAL)
    monkeypatch.setattr(grouping, "BUDGET", -1)  # torch-pruning's walk and the pair walk stop at once
    monkeypatch.setattr(grouping, "ENTRY_BUDGET", -1)
    ours = layers(grouping.get_pruning_group)
    assert len(ours) == len(theirs) == 26 and ours == theirs
    assert not getattr(dg, "unwalkable", {})


def test_walk_drops_multiplied_indices_and_records_the_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch-pruning reads the cascade's views as flattens (x3 per head); past the budgets the index-only walk
    # drops indices no parameter has, ends, and records the roots whose groups lost some
    torch.manual_seed(0)
    model = Cascade().eval()
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 8, 8))
    _tiny_budgets(monkeypatch)
    grouping.install()  # what importing edgeslim's pruning does
    found = list(dg.get_all_groups(ignored_layers=[model.fc]))
    widest = max(max(p.shape) for p in model.parameters())
    assert found and all(max(idxs) < widest for g in found for _, idxs in g if idxs)
    stem = next(g for g in found if g[0].dep.target.module is model.stem)
    assert {model.stem, model.proj} <= {dep.target.module for dep, _ in stem}
    why = dg.unwalkable[model.stem]
    assert why.startswith("torch-pruning cannot follow its channels: it maps channel index ")
    assert why.endswith(f"past the widest parameter dimension of the model ({widest}); a reshape it reads as a "
                        "flatten multiplies them")


def test_unfollowable_group_is_left_whole_by_prune(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeslim.plugin.pruning import PruneConfig, Target, prune

    torch.manual_seed(0)
    model = Cascade(mlp=64).eval()
    x = torch.randn(1, 3, 8, 8)
    _tiny_budgets(monkeypatch)
    res = prune(model, x, PruneConfig(target=Target.parse("params=0.8")))
    s = res.summary()
    whole = {d["module"]: d["reason"] for d in s["left_whole"]}
    assert sorted(whole) == ["mlp.2", "qkvs.3"]  # the residual stream's group (rooted at mlp.2) and the last head's
    assert all(why.startswith("torch-pruning cannot follow its channels: it maps channel index ") for why in whole.values()), whole
    assert res.model.stem.out_channels == 32 and res.model.mlp[0].out_features < 64
    assert s["target_met"] is True and res.model(x).shape == (1, 10)


def test_a_group_torch_pruning_cannot_map_through_a_split_is_left_whole_with_the_reason() -> None:
    # timm EfficientViM: in its stem a split's index mapping has no sizes (IndexError inside torch-pruning's walk,
    # which used to stop the prune as "cannot trace"); that group is left whole and the rest meets the target
    import timm

    torch.manual_seed(0)
    model = timm.create_model("efficientvim_m1", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    res = edgeslim.prune(model, x, PruneConfig(criterion="l2", target="params=0.5"))
    summary = res.summary()
    assert summary["target_met"] is True
    assert any("split or concat whose sizes it did not infer" in d["reason"] for d in summary["left_whole"])
    with torch.no_grad():
        assert res.model(x).shape == (1, 10)
