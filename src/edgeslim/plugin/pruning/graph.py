"""torch-pruning dependency graphs with edgeslim's errors: layer resolution, groups, tracing."""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Callable, Iterator, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency.node import Node

from edgeslim.errors import ConfigError, UntraceableModelError
from edgeslim.plugin.pruning.metrics import ForwardFn, Inputs, call

PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


def classifier_head(model: nn.Module) -> list[str]:
    """The name of the last ``nn.Linear`` (the classifier head), if any."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1:]


def resolve_layers(model: nn.Module, patterns: Sequence[str]) -> list[nn.Module]:
    """Modules whose names equal or fully match one of ``patterns``.

    Raises:
        ConfigError: A pattern matches nothing (names a few valid module names).
    """
    named = dict(model.named_modules())
    out: list[nn.Module] = []
    for pat in patterns:
        hits = [m for n, m in named.items() if n == pat or (n and re.fullmatch(pat, n))]
        if not hits:
            sample = ", ".join(n for n in list(named)[1:8])
            raise ConfigError(f"layer {pat!r} matches no module of {type(model).__name__} (modules: {sample}, ...)")
        out.extend(h for h in hits if h not in out)
    return out


class _Tracker:
    """Follows which module's forward is running, to name the culprit of a failure."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.active: list[str] = []
        self.last_done = ""

    def where(self) -> str:
        """``module 'x' (Conv2d)`` for the innermost running module, else the top-level forward."""
        if self.active:
            name = self.active[-1]
            return f"module {name!r} ({type(self.model.get_submodule(name)).__name__})"
        after = f", after module {self.last_done!r}" if self.last_done else ""
        return f"the forward of {type(self.model).__name__} itself{after}"


@contextlib.contextmanager
def _last_module_tracker(model: nn.Module) -> Iterator[_Tracker]:
    tracker = _Tracker(model)
    handles = []

    def pre(name: str) -> Callable[..., None]:
        return lambda *_: tracker.active.append(name)

    def post(name: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            if tracker.active and tracker.active[-1] == name:
                tracker.active.pop()
            tracker.last_done = name
        return hook

    for name, mod in model.named_modules():
        if name:
            handles.append(mod.register_forward_pre_hook(pre(name)))
            handles.append(mod.register_forward_hook(post(name)))
    try:
        yield tracker
    finally:
        for h in handles:
            h.remove()


def _rank(node: Node) -> int:
    sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", getattr(node.grad_fn, "_saved_self_sizes", ()))
    return len(sizes)


def _is_shuffle(node: Node) -> bool:
    """A reshape into or out of a >= 5-D tensor: the ``view(b, g, c // g, h, w)`` of a channel shuffle
    (ShuffleNet) or the ``view(b, -1, h, w)`` that undoes it. torch-pruning maps channels through a
    reshape as a flatten: wrong for a shuffle (a permutation), and it divides by zero on ShuffleNetV2."""
    if node.type is not tp.ops.OPTYPE.RESHAPE:
        return False
    if _rank(node) >= 5:
        return True
    nxt = list(node.outputs)
    for _ in range(2):  # through the transpose (and an elementwise op) to the reshape back
        if any(n.type is tp.ops.OPTYPE.RESHAPE and _rank(n) >= 5 for n in nxt):
            return True
        nxt = [o for n in nxt if n.type is tp.ops.OPTYPE.ELEMENTWISE for o in n.outputs]
    return False


def _upstream(node: Node) -> list[Node]:
    """The nodes feeding ``node`` directly or through elementwise ops (transpose, contiguous ...)."""
    out: list[Node] = []
    todo = list(node.inputs)
    while todo and len(out) < 16:
        n = todo.pop()
        out.append(n)
        if n.type is tp.ops.OPTYPE.ELEMENTWISE:
            todo.extend(n.inputs)
    return out


def _tie_shuffled(graph: tp.DependencyGraph, shuffles: set[Node]) -> None:
    """Keep every channel group that passes through a channel shuffle whole: the layers producing its
    channels (and depthwise convs on them) join the graph's ignored layers. A shuffle permutes
    channels across groups, which torch-pruning's index mappings cannot express; the layers inside
    each branch, which never see the shuffle, stay prunable.

    A walk over the channel-coupled nodes (norms, activations, concat, split, reshapes ...) from each
    shuffle: a conv/linear reached from its output side produces tied channels; one reached from
    its input side ends the walk there (its outputs are channels of their own).
    """
    tied: list[nn.Module] = []
    seen: set[tuple[int, bool]] = set()
    todo: list[tuple[Node, bool]] = [(n, True) for n in shuffles]  # (node, reached from its output side)
    while todo:
        node, from_out = todo.pop()
        if (id(node), from_out) in seen:
            continue
        seen.add((id(node), from_out))
        layer = isinstance(node.module, PRUNABLE)
        depthwise = node.type is tp.ops.OPTYPE.DEPTHWISE_CONV
        if layer and (from_out or depthwise):
            tied.append(node.module)
        if layer and not depthwise:
            continue
        todo.extend((n, True) for n in node.inputs)
        todo.extend((n, False) for n in node.outputs)
    graph.IGNORED_LAYERS_IN_TRACING.extend(m for m in dict.fromkeys(tied) if m not in graph.IGNORED_LAYERS_IN_TRACING)


_SHUFFLES: weakref.WeakKeyDictionary[tp.DependencyGraph, set[Node]] = weakref.WeakKeyDictionary()
_TIED: weakref.WeakSet[tp.DependencyGraph] = weakref.WeakSet()


def _install_shuffle_handling() -> None:
    """Teach torch-pruning (1.6) channel shuffles, for every graph it builds in this process.

    Its reshape index mapping treats a reshape as a flatten: for a shuffle's reshapes it divides by
    zero (ShuffleNetV2) or maps channels wrongly. Those reshapes are skipped and recorded, and once a
    graph's index mappings are set, the groups through them are tied (:func:`_tie_shuffled`).
    Other reshapes are mapped by torch-pruning as before. A concat whose input sizes cannot be inferred
    gets no index mapping (torch-pruning 1.6 raises a TypeError there). Installed once, on import.
    """
    from torch_pruning.dependency import graph as tp_graph
    from torch_pruning.dependency import index_mapping, shape_infer

    if getattr(index_mapping.update_index_mapping, "_edgeslim", False):
        return
    reshape, update = index_mapping.update_reshape_index_mapping, index_mapping.update_index_mapping
    concat = index_mapping.update_concat_index_mapping

    def update_concat(graph: tp.DependencyGraph, node: Node) -> None:
        # torch-pruning sums the input sizes before checking them for None (an input whose channels it cannot
        # infer: Swin-S/B's patch merging): TypeError. Such a concat gets no index mapping, as it intends.
        if node.type is tp.ops.OPTYPE.CONCAT:
            sizes = node.module.concat_sizes
            if sizes is None:
                sizes = [shape_infer.infer_channels_between(graph, n, node) for n in node.inputs]
            if any(s is None for s in sizes):
                node.module.concat_sizes = sizes
                return
        concat(graph, node)

    def update_reshape(graph: tp.DependencyGraph, node: Node) -> None:
        if _is_shuffle(node):
            _SHUFFLES.setdefault(graph, set()).add(node)
            return
        # a side inferred as 0 channels (fed by the model's input, e.g. SHViT's stem) divides by zero in torch-pruning:
        # no index mapping, as torch-pruning does for a size it cannot infer
        with contextlib.suppress(ZeroDivisionError):
            reshape(graph, node)

    def update_all(graph: tp.DependencyGraph) -> None:
        for node in list(graph.module2node.values()):
            if node.type is tp.ops.OPTYPE.SPLIT and any(_is_shuffle(i) for i in _upstream(node)):
                node.enable_index_mapping = False  # its split sizes are inferred through the shuffle: wrong
        update(graph)
        if graph in _SHUFFLES and graph not in _TIED:
            _TIED.add(graph)
            _tie_shuffled(graph, _SHUFFLES[graph])

    update_all._edgeslim = True  # type: ignore[attr-defined]
    index_mapping.update_reshape_index_mapping = update_reshape
    index_mapping.update_concat_index_mapping = update_concat
    index_mapping.update_index_mapping = update_all
    assert tp_graph.index_mapping is index_mapping


_install_shuffle_handling()


@contextlib.contextmanager
def tracing_errors(model: nn.Module) -> Iterator[None]:
    """Turn any failure while torch-pruning traces ``model`` into an :class:`UntraceableModelError`."""
    with _last_module_tracker(model) as tracker:
        try:
            yield
        except UntraceableModelError:
            raise
        except Exception as exc:
            raise UntraceableModelError(
                f"torch-pruning cannot trace {type(model).__name__}: {tracker.where()} fails with "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. Make that module's forward "
                "use standard torch ops, or list it in ignored_layers; the model was not modified"
            ) from exc


def build_graph(model: nn.Module, example_inputs: Inputs) -> tp.DependencyGraph:
    """Trace ``model`` into a torch-pruning DependencyGraph.

    Raises:
        UntraceableModelError: Tracing failed; the message names the module and the op.
    """
    with tracing_errors(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)


def output_shapes(output: object) -> list[tuple[int, ...]]:
    """The shapes of every tensor in a model output (a tensor, or nested tuples / lists / dicts of them)."""
    if isinstance(output, torch.Tensor):
        return [tuple(output.shape)]
    if isinstance(output, dict):
        return [s for k in sorted(output, key=str) for s in output_shapes(output[k])]
    if isinstance(output, list | tuple):
        return [s for item in output for s in output_shapes(item)]
    return []


def forward_failure(model: nn.Module, example_inputs: Inputs, expected: Sequence[tuple[int, ...]],
                    forward_fn: ForwardFn | None = None) -> str | None:
    """Why ``model`` no longer runs like the original on ``example_inputs``: an exception (naming the module
    whose forward raised) or output shapes other than ``expected``; ``None`` when it runs and matches."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                out = call(model, example_inputs, forward_fn)
            except Exception:  # run it again with a hook on every module to name the one that fails
                with _last_module_tracker(model) as tracker:
                    try:
                        call(model, example_inputs, forward_fn)
                    except Exception as exc:
                        return (f"after pruning, {tracker.where()} fails with {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}")
                return "after pruning, the forward fails only on its first run"
    finally:
        model.train(was)
    got = output_shapes(out)
    if got != list(expected):
        return f"after pruning, the output shapes change from {list(expected)} to {got}"
    return None


def check_inputs(example_inputs: Inputs) -> Inputs:
    """Validate ``example_inputs`` (a tensor or a tuple of tensors)."""
    items = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        raise ConfigError("example_inputs must be a tensor or a tuple of tensors, e.g. torch.randn(1, 3, 32, 32)")
    return example_inputs
