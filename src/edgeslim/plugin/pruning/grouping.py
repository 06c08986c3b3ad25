"""torch-pruning's ``DependencyGraph.get_pruning_group`` without its exponential case.

torch-pruning follows a channel through every path of the graph and records each path's indices
separately: it only skips a layer already reached with exactly the same indices. Where channels are
sliced and concatenated in every block (timm ``rexnet_100``: ``cat([x[:, :c] + shortcut, x[:, c:]])``)
the number of distinct index lists grows with each block, and building one group took hours.

:func:`install` replaces the method with one that runs torch-pruning's own walk unchanged (same group,
same order) up to :data:`BUDGET` steps or :data:`ENTRY_BUDGET` index entries; past that it starts again
with a walk that sends each ``(index, root index)`` through each layer once. Where channels mix across
the group (timm ``efficientvit_m0``'s cascaded heads: each head's output is added to the next head's
input chunk) every index meets every root index and that walk grows as layers x indices x root indices;
past :data:`ENTRY_BUDGET` pairs it starts again sending each index through each layer once, with the
first root index that reached it. Index mappings depend on the index only, so the walks reach the same
layers and indices, and all end in torch-pruning's own merge, which keeps one entry per layer and index
(with the first root index): the group is the same set of layers and indices.

Where single indices multiply (a reshape torch-pruning reads as a flatten sends each index to many, and a
cycle of them grows the indices without end: ``efficientvit_m0`` went past 14 GB), the index-only walk drops
every index at or past the widest dimension of any parameter of the model (no layer has that channel), so
it ends. A group that lost such indices has its root recorded with the reason in the graph's
``unwalkable`` dict, and :func:`~edgeslim.plugin.pruning.groupcheck.unmappable_reasons` leaves it whole.
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
#: Index entries torch-pruning's walk, then the ``(index, root index)`` walk, may record before the next walk
#: takes over (a ViT-B embedding stream records ~10^5).
ENTRY_BUDGET = 200_000
_CHUNK = 256  # indices mapped at a time (a flatten map sends one index to hundreds)


class _OverBudget(Exception):
    pass


def _widest(graph: tp.DependencyGraph) -> int:
    """The largest dimension of any parameter of the graph's model (no channel index reaches it), cached."""
    if "widest" not in graph.__dict__:
        graph.__dict__["widest"] = max((max(p.shape) for p in graph.model.parameters() if p.dim()), default=1)
    return int(graph.__dict__["widest"])


class _Walk:
    """One group's walk: ``widest`` bounds the indices; ``dropped`` is the largest index dropped (0: none)."""

    def __init__(self, graph: tp.DependencyGraph) -> None:
        self.widest = _widest(graph)
        self.dropped = 0

    def mapped(self, dep: Any, idxs: Any, *, clip: bool = False) -> list[Any]:
        """``idxs`` sent through ``dep``'s index mappings (torch-pruning's channel index maps). A flatten map
        that would send them past :data:`ENTRY_BUDGET` entries ends the walk (:class:`_OverBudget`); with
        ``clip`` they go a chunk at a time and indices at ``widest`` or past it are dropped (the largest kept
        in ``dropped``)."""
        if not clip:
            for mapping in dep.index_mapping:
                if mapping is not None:
                    if not getattr(mapping, "reverse", True) and len(idxs) * getattr(mapping, "_stride", 1) > ENTRY_BUDGET:
                        raise _OverBudget
                    idxs = mapping(idxs)
            return list(idxs)
        out: list[Any] = []
        for start in range(0, len(idxs), _CHUNK):
            part = idxs[start:start + _CHUNK]
            for mapping in dep.index_mapping:
                if mapping is not None:
                    part = mapping(part)
            top = max((i.idx for i in part), default=0)
            if top >= self.widest:
                self.dropped = max(self.dropped, top)
                part = [i for i in part if i.idx < self.widest]
            out.extend(part)
        return out

    def tp(self, group: Group) -> None:
        """torch-pruning's walk (``_fix_dependency_graph_non_recursive``), stopped past :data:`BUDGET` steps or
        :data:`ENTRY_BUDGET` entries. Its ``group.has_pruning_op`` (the same layer, function and index list
        already in the group) is a set here: the same answer in constant time."""
        visited = set()
        stack = [(group[0].dep, group[0].idxs)]
        done = {(group[0].dep.target, group[0].dep.handler, tuple(group[0].idxs))}
        steps = entries = 0
        while stack:
            dep, idxs = stack.pop(-1)
            node, fn = dep.target, dep.handler
            visited.add(node)
            for new_dep in node.dependencies:
                if new_dep.is_triggered_by(fn):
                    new = self.mapped(new_dep, idxs)
                    if len(new) == 0:
                        continue
                    item = (new_dep.target, new_dep.handler, tuple(new))
                    if new_dep.target in visited and item in done:
                        continue
                    done.add(item)
                    group.add_dep(new_dep, new)
                    stack.append((new_dep, new))
                    steps, entries = steps + 1, entries + len(new)
                    if steps > BUDGET or entries > ENTRY_BUDGET:
                        raise _OverBudget

    def merged(self, group: Group, *, pairs: bool = True) -> None:
        """The same walk, sending each ``(index, root index)`` (``pairs=False``: each index) through each
        ``(layer, pruning function)`` once. With ``pairs`` stopped past :data:`ENTRY_BUDGET` pairs; without,
        bounded by layers x ``widest`` (indices past it are dropped)."""
        root = group[0]

        def key(i: Any) -> Any:
            return (i.idx, i.root_idx) if pairs else i.idx

        seen: dict[tuple[Any, Any], set[Any]] = {(root.dep.target, root.dep.handler): {key(i) for i in root.idxs}}
        stack = [(root.dep, list(root.idxs))]
        entries = 0
        while stack:
            dep, idxs = stack.pop(-1)
            node, fn = dep.target, dep.handler
            for new_dep in node.dependencies:
                if new_dep.is_triggered_by(fn):
                    known = seen.setdefault((new_dep.target, new_dep.handler), set())
                    fresh = []
                    for i in self.mapped(new_dep, idxs, clip=not pairs):
                        k = key(i)
                        if k not in known:
                            known.add(k)
                            fresh.append(i)
                    if not fresh:
                        continue
                    group.add_dep(new_dep, fresh)
                    stack.append((new_dep, fresh))
                    entries += len(fresh)
                    if pairs and entries > ENTRY_BUDGET:
                        raise _OverBudget


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

    walk = _Walk(self)
    group = start()
    try:
        walk.tp(group)
    except _OverBudget:
        group = start()
        try:
            walk.merged(group)
        except _OverBudget:
            group = start()
            walk.merged(group, pairs=False)
    except (IndexError, TypeError) as exc:  # a split/concat mapping without its sizes (timm EfficientViM's stem)
        group = start()
        if self.is_out_channel_pruning_fn(pruning_fn):  # groupcheck leaves this group whole
            self.__dict__.setdefault("unwalkable", {})[module] = (
                f"torch-pruning cannot map its channels through a split or concat whose sizes it did not infer "
                f"({type(exc).__name__}: {exc})")
        walk.dropped = 0
    if walk.dropped and self.is_out_channel_pruning_fn(pruning_fn):  # groupcheck leaves this group whole
        self.__dict__.setdefault("unwalkable", {})[module] = (
            f"torch-pruning cannot follow its channels: it maps channel index {walk.dropped} past the widest "
            f"parameter dimension of the model ({walk.widest}); a reshape it reads as a flatten multiplies them")
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
