"""torch-pruning's ``DependencyGraph.get_pruning_group`` without its exponential case.

torch-pruning follows a channel through every path of the graph and records each path's indices
separately: it only skips a layer already reached with exactly the same indices. Where channels are
sliced and concatenated in every block (timm ``rexnet_100``: ``cat([x[:, :c] + shortcut, x[:, c:]])``)
the number of distinct index lists grows with each block, and building one group took hours.

:func:`install` replaces the method with one that runs torch-pruning's own walk unchanged (same group,
same order) up to :data:`BUDGET` steps; past that it starts again with a walk that sends each
``(index, root index)`` through each layer once. Both end in torch-pruning's own merge, which keeps one
entry per layer and index, so the group is the same set of layers and indices.
"""

from __future__ import annotations

from numbers import Number
from typing import Any

import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers, ops
from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.dependency.group import Group
from torch_pruning.pruner import function

#: torch-pruning's own method (kept for comparisons: ``benchmarks/prune_time.py`` times torch-pruning alone with it).
ORIGINAL = tp.DependencyGraph.get_pruning_group
#: Steps of torch-pruning's own walk before the merged walk takes over (ordinary groups take tens).
BUDGET = 2000


class _OverBudget(Exception):
    pass


def _walk_tp(group: Group) -> None:
    """torch-pruning's walk (``_fix_dependency_graph_non_recursive``), stopped after :data:`BUDGET` steps."""
    visited = set()
    stack = [(group[0].dep, group[0].idxs)]
    steps = 0
    while stack:
        dep, idxs = stack.pop(-1)
        node, fn = dep.target, dep.handler
        visited.add(node)
        for new_dep in node.dependencies:
            if new_dep.is_triggered_by(fn):
                new = _mapped(new_dep, idxs)
                if len(new) == 0:
                    continue
                if new_dep.target in visited and group.has_pruning_op(new_dep, new):
                    continue
                group.add_dep(new_dep, new)
                stack.append((new_dep, new))
                steps += 1
                if steps > BUDGET:
                    raise _OverBudget


def _mapped(dep: Any, idxs: Any) -> Any:
    """``idxs`` sent through ``dep``'s index mappings (torch-pruning's channel index maps)."""
    for mapping in dep.index_mapping:
        if mapping is not None:
            idxs = mapping(idxs)
    return idxs


def _walk_merged(group: Group) -> None:
    """The same walk, sending each ``(index, root index)`` through each ``(layer, pruning function)`` once."""
    root = group[0]
    seen: dict[tuple[Any, Any], set[tuple[Any, Any]]] = {
        (root.dep.target, root.dep.handler): {(i.idx, i.root_idx) for i in root.idxs}}
    stack = [(root.dep, list(root.idxs))]
    while stack:
        dep, idxs = stack.pop(-1)
        node, fn = dep.target, dep.handler
        for new_dep in node.dependencies:
            if new_dep.is_triggered_by(fn):
                new = _mapped(new_dep, idxs)
                known = seen.setdefault((new_dep.target, new_dep.handler), set())
                fresh = [i for i in new if (i.idx, i.root_idx) not in known]
                if not fresh:
                    continue
                known.update((i.idx, i.root_idx) for i in fresh)
                group.add_dep(new_dep, fresh)
                stack.append((new_dep, fresh))


def get_pruning_group(self: tp.DependencyGraph, module: Any, pruning_fn: Any, idxs: Any) -> Group:
    """``DependencyGraph.get_pruning_group`` (torch-pruning 1.6) with the bounded walk (see the module doc)."""
    if module not in self.module2node:
        raise ValueError(f"Module {module} is not in the dependency graph.")
    if isinstance(module, ops.TORCH_CONV) and module.groups == module.out_channels and module.out_channels > 1:
        pruning_fn = function.prune_depthwise_conv_out_channels
    if isinstance(idxs, Number):
        idxs = [idxs]
    hybrid = [_helpers._HybridIndex(idx=i, root_idx=i) for i in idxs]
    index_mapping.update_index_mapping(self)
    root = self.module2node[module]

    def start() -> Group:
        group = Group()
        group.add_dep(dep=Dependency(pruning_fn, pruning_fn, source=root, target=root), idxs=hybrid)
        return group

    group = start()
    try:
        _walk_tp(group)
    except _OverBudget:
        group = start()
        _walk_merged(group)
    # torch-pruning's merge (``Group.add_and_merge``: one entry per layer and pruning function, in the order
    # first reached, each index once, first root index kept), in linear time
    entries: dict[tuple[Any, Any], tuple[Any, list[Any], set[int]]] = {}
    for dep, item_idxs in group.items:
        if isinstance(dep.target.module, nn.Parameter) and any(
                dep.target.module is p for p in self.ignored_params):
            continue
        _, kept, seen = entries.setdefault((dep.target, dep.handler), (dep, [], set()))
        for index in item_idxs:
            if index.idx not in seen:
                kept.append(index)
                seen.add(index.idx)
    merged = Group()
    merged._DG = self
    for dep, kept, _ in entries.values():
        merged.add_dep(dep, _helpers.to_plain_idxs(kept))
        merged[len(merged) - 1].root_idxs = _helpers.to_root_idxs(kept)
    return merged


def install() -> None:
    """Make :func:`get_pruning_group` torch-pruning's (idempotent; same groups wherever torch-pruning's own
    walk finishes within :data:`BUDGET` steps)."""
    tp.DependencyGraph.get_pruning_group = get_pruning_group
