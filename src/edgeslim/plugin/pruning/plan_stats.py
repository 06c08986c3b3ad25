"""What a channel plan would remove, without pruning: params, MACs and bytes of a plan from one graph.

The target search asks "how large is the model under plan P?" for many plans. Pruning a copy per
plan (a new torch-pruning DependencyGraph and its groups each time) cost minutes on models with many
coupled layers (timm ``rexnet_100``: 25+ min). :class:`PlanEvaluator` builds the graph, its groups and
each group's importance ONCE, then for a plan runs torch-pruning's own selection
(``step(interactive=True)``: round_to, max_layer_ratio, per-group ratios, global ranking, ignored
layers, attention heads) without calling ``group.prune()``, and counts per layer which indices of
which dimension would go. Params and bytes are those of the touched layers pruned on their own copies
(exact); MACs scale each layer's counted MACs by its kept weight fraction (activation layers after a
pruned conv keep their count: within a fraction of a percent). The final model is always pruned and
measured for real.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from edgeslim.errors import EdgeslimError
from edgeslim.models import clone
from edgeslim.plugin.pruning.config import PruneConfig
from edgeslim.plugin.pruning.heads import Attention, remove_heads
from edgeslim.plugin.pruning.importance.base import needs_data
from edgeslim.plugin.pruning.metrics import Called, Inputs, ModelStats, count_ops, measure
from edgeslim.plugin.pruning.structured import Plan, make_pruner, plan_ratios, rule_ratios
from edgeslim.plugin.pruning.transformers import TransformerPruner

_Key = tuple[int, Any]  # (id of the pruned layer or parameter, torch-pruning handler)


@dataclass
class PlanGroups:
    """The groups a plan prunes: root layer name -> number of root channels removed, and per-layer removals."""

    roots: dict[str, int]
    removed: dict[_Key, tuple[Any, Any, set[int]]]
    owners: dict[_Key, str] = field(default_factory=dict)  # the root of the (first) group removing each entry
    direct: list[tuple[Attention, list[int]]] = field(default_factory=list)  # heads edgeslim removes itself


@contextlib.contextmanager
def _reuse_graph(graph: tp.DependencyGraph | None, built: list[tp.DependencyGraph]) -> Iterator[None]:
    """While active, torch-pruning pruners get ``graph`` instead of tracing the model again (the first
    pruner built while ``graph`` is None traces it; the graph is appended to ``built``)."""
    original = tp.DependencyGraph.build_dependency

    def build(self: tp.DependencyGraph, *args: Any, **kwargs: Any) -> tp.DependencyGraph:
        if graph is not None:
            return graph
        dg = original(self, *args, **kwargs)
        built.append(dg)
        return dg

    tp.DependencyGraph.build_dependency = build
    try:
        yield
    finally:
        tp.DependencyGraph.build_dependency = original


class _CachedGraph:
    """Caches on one DependencyGraph instance: its groups per ignored set, and each full group, so that a
    plan's pruning group is the full group's items restricted to the chosen root indices."""

    def __init__(self, graph: tp.DependencyGraph) -> None:
        self.graph = graph
        self.get_pruning_group = graph.get_pruning_group
        self.get_all_groups = graph.get_all_groups
        self.full: dict[tuple[int, Any], Any] = {}
        self.groups: dict[tuple[Any, ...], list[Any]] = {}
        self.live = False  # pruning for real: groups traced on the current (partly pruned) model
        graph.get_pruning_group = self.pruning_group
        graph.get_all_groups = self.all_groups
        graph.unmappable_memo = {}  # see groupcheck.unmappable_reasons

    def all_groups(self, ignored_layers: Sequence[Any] = (), root_module_types: Sequence[Any] = ()) -> Iterator[Any]:
        key = (frozenset(id(m) for m in ignored_layers), tuple(root_module_types))
        if key not in self.groups:
            self.groups[key] = list(self.get_all_groups(ignored_layers=list(ignored_layers),
                                                        root_module_types=root_module_types))
        return iter(self.groups[key])

    def pruning_group(self, module: Any, pruning_fn: Any, idxs: Sequence[int]) -> Any:
        if self.live:
            return self.get_pruning_group(module, pruning_fn, idxs)
        dg = self.graph
        if isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.out_channels > 1:
            pruning_fn = tp.pruner.function.prune_depthwise_conv_out_channels
        key = (id(module), pruning_fn)
        if key not in self.full:
            n = dg.get_out_channels(module) if dg.is_out_channel_pruning_fn(pruning_fn) else dg.get_in_channels(module)
            self.full[key] = self.get_pruning_group(module, pruning_fn, list(range(n)))
        full = self.full[key]
        if any(item.root_idxs is None or None in item.root_idxs for item in full):
            return self.get_pruning_group(module, pruning_fn, idxs)  # a mapping that loses root indices: trace it
        chosen = {int(i) for i in idxs}
        group = tp.dependency.Group()
        group._DG = dg
        for item in full:
            kept = [(i, r) for i, r in zip(item.idxs, item.root_idxs, strict=True) if r in chosen]
            group.add_dep(item.dep, [i for i, _ in kept])
            group[len(group) - 1].root_idxs = [r for _, r in kept]
        return group


class GroupFailure(RuntimeError):
    """torch-pruning raised while handling one group (its root layer is known): leave that group whole.

    Attributes:
        module: The group's root layer name.
        reason: What failed, for ``left_whole``.
    """

    def __init__(self, module: str, exc: BaseException) -> None:
        self.module = module
        self.reason = f"torch-pruning fails on this group ({type(exc).__name__}: {str(exc)[:200]})"
        super().__init__(f"{module}: {self.reason}")


class PlanEvaluator:
    """Params, MACs and bytes of channel plans on ``model`` without pruning it.

    Args:
        model: The (prepared) model; never modified.
        example_inputs: Inputs for tracing and for counting MACs once.
        config: The prune config (ignored layers, round_to, max_layer_ratio ...).
        importance: The criterion (statistics already collected).
        extra_ignored: Names of layers left whole on top of the config's (see ``left_whole``).
        before: ``measure(model, example_inputs)`` when the caller has it.
    """

    def __init__(self, model: nn.Module, example_inputs: Inputs, config: PruneConfig,
                 importance: tp.importance.Importance, extra_ignored: Sequence[str] = (),
                 before: ModelStats | None = None) -> None:
        self.model, self.example_inputs, self.config, self.importance = model, example_inputs, config, importance
        self.extra_ignored = list(extra_ignored)
        self._graph: tp.DependencyGraph | None = None
        self._cache: _CachedGraph | None = None
        self.spent = False
        self._scores: dict[tuple[int, Any, int], Any] = {}
        self._template: TransformerPruner | None = None
        self._modules: dict[str, nn.Module] = {}
        self._rules: dict[str, float] = {}
        self._specs: dict[tuple[int, ...], Any] = {}  # transformer specs by ignored layers (make_pruner)
        self._found: dict[tuple[Any, ...], PlanGroups] = {}  # groups by plan
        self._cuts: dict[tuple[Any, ...], tuple[int, int, float, float | None]] = {}  # one layer's removals -> its cut
        if needs_data(importance):
            importance.bind(model)
        self.before = before or measure(model, example_inputs, config.forward_fn)
        was = model.training
        model.eval()
        try:
            fn = config.forward_fn
            counted = model if fn is None else Called(model, fn)
            flops: dict[nn.Module, Any] = {}

            def run() -> None:  # one forward counts the MACs and finds the producers
                flops.update(count_ops(counted, (example_inputs,) if fn else example_inputs)[2])

            self._source = _producers(model, run)
        finally:
            model.train(was)
        self._flops = {id(m): float(f or 0) for m, f in flops.items()}
        self._names = {id(m): n for n, m in model.named_modules()}
        self.trials = 0
        self._direct: dict[tuple[int, tuple[int, ...]], tuple[int, int, float]] = {}
        #: Layers the pruner leaves whole by edgeslim's analysis (``{"module", "reason"}``), once a plan was evaluated.
        self.left_whole: list[dict[str, str]] = []

    def _pruner(self, plan: Plan) -> tp.pruner.BasePruner:
        if self._template is not None:  # the first pruner, re-aimed: no pruner built per plan
            ratios = plan_ratios(self._modules, self._rules, plan)
            return self._template.retarget(plan.ratio, ratios, plan.global_ranking)
        built: list[tp.DependencyGraph] = []
        with _reuse_graph(self._graph, built):
            pruner = make_pruner(self.model, self.example_inputs, self.config, self.importance, plan,
                                 extra_ignored=self.extra_ignored, specs=self._specs)
        names = self._names
        self.left_whole = [{"module": names.get(id(m), "?"), "reason": r}
                           for m, r in getattr(pruner, "left_whole", {}).items()]
        if self._graph is None:
            self._graph = built[0] if built else pruner.DG
            self._cache = _CachedGraph(self._graph)
        scores = self._scores
        estimate = pruner.estimate_importance

        def cached(group: Any) -> Any:
            root = group[0].dep
            key = (id(root.target.module), root.handler, len(group[0].idxs))
            if key not in scores:
                try:
                    scores[key] = estimate(group)
                except EdgeslimError:
                    raise
                except Exception as exc:  # torch-pruning cannot score this group: it is left whole (degrade.py)
                    raise GroupFailure(names.get(id(root.target.module), "?"), exc) from exc
            return scores[key]

        pruner.estimate_importance = cached
        if isinstance(pruner, TransformerPruner):
            self._template = pruner
            self._modules, self._rules = dict(self.model.named_modules()), rule_ratios(self.model, self.config.layer_rules)
        return pruner

    def prune(self, plan: Plan) -> nn.Module:
        """Prune ``model`` itself following ``plan``, in one step, reusing the graph, its groups (all taken
        before any channel goes) and the importance scores; each group's indices are traced on the model as
        it is pruned, as torch-pruning does. The evaluator is spent afterwards (its graph is the pruned one).
        """
        if self.spent:
            raise RuntimeError("this PlanEvaluator already pruned its model; build a new one")
        pruner = self._pruner(plan)
        assert self._cache is not None
        self._cache.live = self.spent = True
        pruner.step()
        self.model.zero_grad(set_to_none=True)
        return self.model

    def groups(self, plan: Plan) -> PlanGroups:
        """The groups ``plan`` prunes and, per layer (and pruning function), the original indices removed."""
        key = (plan.ratio, tuple(sorted(plan.group_ratios.items())), plan.global_ranking)
        if key not in self._found:
            self._found[key] = self._groups(plan)
        return self._found[key]

    def _groups(self, plan: Plan) -> PlanGroups:
        pruner = self._pruner(plan)
        removed: dict[_Key, tuple[Any, Any, set[int]]] = {}
        roots: dict[str, int] = {}
        owners: dict[_Key, str] = {}
        with torch.no_grad():
            for group in tp.pruner.BasePruner.step(pruner, interactive=True) or ():
                root = _owner(pruner.DG, group, self._names)
                name = self._names.get(id(root), "?")
                roots[name] = roots.get(name, 0) + len(group[0].idxs)
                for dep, idxs in group:
                    if not idxs:
                        continue
                    key = (id(dep.target.module), dep.handler)
                    entry = removed.setdefault(key, (dep.target.module, dep.handler, set()))
                    owners.setdefault(key, name)
                    entry[2].update(map(int, idxs))
        direct = pruner.direct_heads() if isinstance(pruner, TransformerPruner) else []
        return PlanGroups(roots, removed, owners, direct)

    def root_names(self) -> list[str]:
        """The root layer name of every prunable group (in torch-pruning's order)."""
        pruner = self._pruner(Plan(ratio=0.0))
        groups = pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types)
        return [self._names.get(id(g[0].dep.target.module), "?") for g in groups]

    def stats(self, plan: Plan) -> ModelStats:
        """Params, MACs and bytes of ``model`` pruned by ``plan`` (params/bytes exact, MACs scaled per layer)."""
        self.trials += 1
        return self.count(self.groups(plan))

    def _fraction(self, mid: int, width: dict[int, float]) -> float:
        seen = set()
        while mid not in width and mid in self._source and mid not in seen:
            seen.add(mid)
            mid = self._source[mid]
        return width.get(mid, 1.0)

    def _direct_cut(self, att: Attention, drop: list[int]) -> tuple[int, int, float]:
        """Params, bytes and MACs that removing ``drop`` heads from ``att`` takes (on a copy of its module)."""
        key = (id(att.owner), tuple(drop))
        if key not in self._direct:
            work = clone(att.owner)
            remove_heads(att, work, drop)
            share = len(drop) / att.heads
            layers = [*att.layers, *att.followers, *([att.consumer] if att.consumer is not None else [])]
            # heads that go with the stream width (streamheads.py): the stream's group already took their
            # projections' input columns and the consumer's output rows; what both cut is counted once
            cut = len(drop) * att.head_dim if att.stream else 0
            both = (sum(len(att.rows(m, drop)) for m in att.layers) + cut) * cut
            size = next(iter(att.owner.parameters())).element_size()
            self._direct[key] = (_numel(att.owner.parameters()) - _numel(work.parameters()) - both,
                                 _state_bytes(att.owner) - _state_bytes(work) - both * size,
                                 sum(self._flops.get(id(m), 0.0) for m in layers) * share)
        return self._direct[key]

    def count(self, found: PlanGroups) -> ModelStats:
        """Params, MACs and bytes after removing ``found``'s indices (each layer pruned on its own copy, once
        per distinct set of removals: plans that share a layer's removals share its count)."""
        per: dict[int, list[tuple[_Key, Any, Any, tuple[int, ...]]]] = {}  # in torch-pruning's order
        for key, (target, handler, idxs) in sorted(found.removed.items(), key=lambda kv: _order(kv[1][1])):
            per.setdefault(key[0], []).append((key, target, handler, tuple(sorted(idxs))))
        d_params = d_bytes = 0
        macs = float(self.before.macs)
        width: dict[int, float] = {}  # kept fraction of each touched layer's output channels
        for tid, ops in per.items():
            p_cut, b_cut, m_cut, kept = self._cut(tid, ops, found.owners)
            d_params, d_bytes, macs = d_params + p_cut, d_bytes + b_cut, macs - m_cut
            if kept is not None:
                width[tid] = kept
        for mid, flops in self._flops.items():  # activations, pools ...: as wide as the layer feeding them
            if flops and mid not in per:
                macs -= flops * (1 - self._fraction(mid, width))
        for att, drop in found.direct:
            p_cut, b_cut, m_cut = self._direct_cut(att, drop)
            d_params, d_bytes, macs = d_params + p_cut, d_bytes + b_cut, macs - m_cut
        b = self.before
        return ModelStats(params=b.params - d_params, macs=round(macs), bytes=b.bytes - d_bytes,
                          nonzero_params=max(b.nonzero_params - d_params, 0))

    def _cut(self, tid: int, ops: list[tuple[_Key, Any, Any, tuple[int, ...]]],
             owners: dict[_Key, str]) -> tuple[int, int, float, float | None]:
        """Params, bytes and MACs that ``ops`` (one layer's removals) take, and the layer's kept output width."""
        memo = (tid, tuple((handler, idxs) for _, _, handler, idxs in ops))
        if memo in self._cuts:
            return self._cuts[memo]
        copies: dict[int, Any] = {}
        for key, target, handler, idxs in ops:
            try:
                _remove(copies, target, handler, list(idxs))
            except EdgeslimError:
                raise
            except Exception as exc:  # torch-pruning cannot prune this member: its group is left whole
                raise GroupFailure(owners.get(key, "?"), exc) from exc
        old, new = ops[0][1], copies[tid]
        cut: tuple[int, int, float, float | None]
        if isinstance(old, torch.Tensor):
            gone = old.numel() - new.numel()
            cut = (gone, gone * old.element_size(), 0.0, None)
        else:
            m_cut = 0.0
            w_old, w_new = getattr(old, "weight", None), getattr(new, "weight", None)
            if isinstance(w_old, torch.Tensor) and isinstance(w_new, torch.Tensor) and w_old.numel():
                m_cut = self._flops.get(tid, 0.0) * (1 - w_new.numel() / w_old.numel())
            cut = (_numel(old.parameters()) - _numel(new.parameters()), _state_bytes(old) - _state_bytes(new), m_cut,
                   _out_width(new) / max(_out_width(old), 1))
        self._cuts[memo] = cut
        return cut


def _remove(copies: dict[int, Any], target: Any, handler: Any, idxs: list[int]) -> None:
    """Apply ``handler`` to ``target``'s copy in ``copies`` (made on first use: meta shapes, or real weights
    for a custom pruner that needs them)."""
    tid = id(target)
    if isinstance(target, nn.Parameter):
        copies[tid] = handler(copies.get(tid, target), idxs)
        return
    if tid not in copies:
        copies[tid] = _shape_copy(target)
    try:
        handler(copies[tid], idxs)
    except (NotImplementedError, RuntimeError):  # a custom pruner that needs real data
        copies[tid] = copy.deepcopy(target)
        handler(copies[tid], idxs)


def _shape_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers are on the meta device (shapes and dtypes only):
    pruning it costs no copy of the weights. Its own lists, dicts and sets are copies too: torch-pruning's
    concat and split pruners change ``concat_sizes`` / ``split_sizes`` in place, and a shared list would move
    the graph's channel offsets for the real prune that follows."""
    new = copy.copy(module)
    for k, v in vars(module).items():
        if isinstance(v, list | dict | set) and not k.startswith("_"):
            setattr(new, k, copy.copy(v))
    new._parameters = {k: None if p is None else nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
                       for k, p in module._parameters.items()}
    new._buffers = {k: None if b is None else torch.empty_like(b, device="meta") for k, b in module._buffers.items()}
    new._modules = {k: None if c is None else _shape_copy(c) for k, c in module._modules.items()}
    return new


def _producers(model: nn.Module, run: Callable[[], None]) -> dict[int, int]:
    """For each leaf module, the leaf module whose output it consumes (id -> id), when that is a module's output,
    seen while ``run()`` runs ``model``."""
    made: dict[int, tuple[int, torch.Tensor]] = {}  # id(tensor) -> (module id, the tensor kept alive)
    source: dict[int, int] = {}

    def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if first is not None and id(first) in made and made[id(first)][0] != id(mod):
            source[id(mod)] = made[id(first)][0]
        if isinstance(out, torch.Tensor):
            made[id(out)] = (id(mod), out)

    leaves = [m for m in model.modules() if not next(m.children(), None)]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return source


def _out_width(module: nn.Module) -> int:
    for attr in ("out_channels", "out_features", "num_features", "normalized_shape"):
        v = getattr(module, attr, None)
        if isinstance(v, int):
            return v
        if isinstance(v, tuple) and v:
            return int(v[-1])
    w = getattr(module, "weight", None)
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() else 1


def _owner(graph: tp.DependencyGraph, group: Any, names: dict[int, str]) -> Any:
    """The first named layer of ``group`` that loses output channels (ignoring it leaves the group whole)."""
    for dep, _ in group:
        if id(dep.target.module) in names and graph.is_out_channel_pruning_fn(dep.handler):
            return dep.target.module
    return group[0].dep.target.module


def _order(handler: Any) -> int:
    """Out-channel pruning before in-channel pruning of the same layer (torch-pruning's order in a group)."""
    return 0 if "out" in getattr(handler, "__name__", "") else 1


def _numel(params: Iterator[torch.Tensor]) -> int:
    return sum(p.numel() for p in params)


def _state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values() if isinstance(t, torch.Tensor))
