"""Checks on torch-pruning's groups before a step: widths kept whole, groups it cannot map."""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import nn


def stream_producers(pruner: tp.pruner.BasePruner, entries: list[nn.Module]) -> list[nn.Module]:
    """One producer of each attention's input channels (the embedding / residual stream): ignoring it keeps
    that width whole (``TransformerConfig.embed_dim=False``), whatever layer made it."""
    dg, out, seen = pruner.DG, [], set[Any]()
    for layer in entries:
        pruner_fn = dg.get_pruner_of_module(layer)
        if pruner_fn is None or layer not in dg.module2node or layer in seen:
            continue
        group = dg.get_pruning_group(layer, pruner_fn.prune_in_channels, [0])
        seen.update(dep.target.module for dep, _ in group)  # entries on the same stream: one group
        out += [dep.target.module for dep, _ in group if isinstance(dep.target.module, nn.Module)
                and dg.is_out_channel_pruning_fn(dep.handler)][:1]
    return out


def unmappable_roots(pruner: tp.pruner.BasePruner) -> list[nn.Module]:
    """Roots of the groups where torch-pruning maps a channel index past the size of a layer or of a
    parameter member (a concat, split or broadcast it did not follow): pruning them would fail or cut the
    wrong channels, so they stay whole. See :func:`unmappable_reasons` for why each one is kept."""
    return list(unmappable_reasons(pruner))


def unmappable_reasons(pruner: tp.pruner.BasePruner) -> dict[nn.Module, str]:
    """:func:`unmappable_roots` with, for each root, the member that cannot take the indices (as a reason).

    A graph that carries an ``unmappable_memo`` dict (one reused for many plans, see ``plan_stats``) keeps the
    answer per ignored set."""
    dg, bad = pruner.DG, dict[nn.Module, str]()
    memo = getattr(dg, "unmappable_memo", None)
    key = (frozenset(id(m) for m in pruner.ignored_layers), tuple(pruner.root_module_types))
    if isinstance(memo, dict):
        if key not in memo:
            memo[key] = _unmappable(pruner, dg, bad)
        return dict(memo[key])
    return _unmappable(pruner, dg, bad)


def _unmappable(pruner: tp.pruner.BasePruner, dg: tp.DependencyGraph, bad: dict[nn.Module, str]) -> dict[nn.Module, str]:
    names = {id(m): n for n, m in pruner.model.named_modules()}
    names.update({id(p): n for n, p in pruner.model.named_parameters()})
    for group in dg.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types):
        root = group[0].dep.target.module
        if root in getattr(dg, "unwalkable", {}):
            bad[root] = dg.unwalkable[root]
            continue
        for dep, idxs in group:
            m = dep.target.module
            if not isinstance(m, nn.Module | torch.Tensor) or not idxs or dg.get_pruner_of_module(m) is None:
                continue
            if dg.is_out_channel_pruning_fn(dep.handler):
                n = dg.get_out_channels(dep.target)
            elif dg.is_in_channel_pruning_fn(dep.handler):
                n = dg.get_in_channels(dep.target)
            else:
                continue
            why = None
            if n is not None and max(int(i) for i in idxs) >= n:
                what = "parameter" if isinstance(m, torch.Tensor) else "layer"
                why = (f"torch-pruning maps its channels past the size of {what} {names.get(id(m), '?')} ({n}): "
                       "a concat, split or broadcast it does not follow")
            elif (isinstance(m, nn.modules.conv._ConvNd) and dg.is_in_channel_pruning_fn(dep.handler)
                  and 1 < m.groups == m.in_channels != m.out_channels):
                why = (f"torch-pruning cannot remove input channels of the grouped conv {names.get(id(m), '?')} "
                       f"(groups={m.groups}, {m.out_channels // m.groups} outputs per input channel)")
            if why is not None:
                bad[group[0].dep.target.module] = why
                break
    return bad
