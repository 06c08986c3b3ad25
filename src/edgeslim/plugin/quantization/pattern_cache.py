"""One traced graph per torchao rewrite pattern and process, instead of one per use.

torchao's PT2E passes find and replace small subgraphs (conv + batch norm, dropout, ...). Each
pass traces its pattern functions with ``torch.export`` every time it runs: converting one QAT
model (``convert_pt2e`` → ``_fold_conv_bn_qat``) traces 96 patterns (four convolution kinds, twelve
variants, a match and a replacement each), about 0.25 s each on a 2-core x86 machine, whatever the
model; ``prepare_qat_pt2e`` and the train/eval switches trace a few more. The traced graph depends
only on the pattern's code, the values it closes over and the shapes of its example inputs, so
:func:`install` wraps torchao's ``_get_aten_graph_module_for_pattern`` with a cache keyed by exactly
those (and grad mode, inference mode and the default dtype). Every call gets its own deep copy of
the cached graph, so a caller that edits it changes nothing for the next one. A pattern the key cannot describe (it closes
over a tensor or an object of another kind) is traced as before, uncached. On torchao 0.18 the QAT
fold also skips the patterns of a convolution kind the graph does not hold (:func:`skip_absent_convs`):
a conv2d model's first QAT convert traces 24 patterns instead of 96.
"""

from __future__ import annotations

import copy
import functools
import types
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import nn

#: The torchao modules that hold a reference to the function (each imported it by name).
_MODULES = (
    "torchao.quantization.pt2e.utils",
    "torchao.quantization.pt2e.qat_utils",
    "torchao.quantization.pt2e.reference_representation_rewrite",
)
_ATTR = "_get_aten_graph_module_for_pattern"
#: Cached graphs per process; cleared when it grows past this many (the PT2E passes use ~110).
MAX_ENTRIES = 1024
_cache: dict[Hashable, Any] = {}


class _Uncacheable(Exception):
    """A pattern or input the cache key cannot describe by value."""


_PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device, torch.layout, torch.memory_format)


def _key(value: Any, depth: int = 0, *, inputs: bool = False) -> Hashable:
    """A hashable description of ``value`` that determines what ``torch.export`` traces from it.

    Tensors passed as inputs (``inputs=True``) are traced symbolically, so only their metadata
    counts; a tensor a pattern closes over is a constant of the graph and makes it uncacheable.
    """
    if depth > 8:
        raise _Uncacheable("nested too deep")
    if isinstance(value, torch.Tensor):
        if not inputs:
            raise _Uncacheable("a constant tensor")
        return ("tensor", tuple(value.shape), value.dtype, value.device.type, value.requires_grad)
    if isinstance(value, _PLAIN):
        return (type(value).__name__, value)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, *(_key(v, depth + 1, inputs=inputs) for v in value))
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        return ("dict", *((k, _key(v, depth + 1, inputs=inputs)) for k, v in items))
    if isinstance(value, types.FunctionType):  # a pattern function: its code and what it closes over
        cells = tuple(_key(c.cell_contents, depth + 1) for c in value.__closure__ or ())
        return ("function", value.__code__, cells, _key(value.__defaults__, depth + 1),
                _key(value.__kwdefaults__, depth + 1))
    if isinstance(value, (types.BuiltinFunctionType, torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return ("builtin", value)  # F.conv2d, torch.ops.aten...: module-level, compared by identity
    if isinstance(value, nn.Module) and set(vars(value)) <= _MODULE_STATE | {"fn"}:
        # torchao's WrapperModule(fn): no parameters, buffers or submodules, only the wrapped function
        if any(True for _ in value.parameters()) or any(True for _ in value.buffers()) or len(value._modules):
            raise _Uncacheable("a module with state")
        return ("module", type(value), value.training, _key(getattr(value, "fn", None), depth + 1))
    raise _Uncacheable(type(value).__name__)


_MODULE_STATE = set(vars(nn.Module()))


def cached(trace: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap torchao's ``_get_aten_graph_module_for_pattern`` (``trace``) with the per-process cache.

    Args:
        trace: The function to wrap: ``(pattern, example_inputs, is_cuda=False, **kwargs) -> GraphModule``.

    Returns:
        A function with the same signature that traces each distinct pattern once and returns a deep copy.
    """
    if getattr(trace, "_edgeslim_cached", False):
        return trace

    @functools.wraps(trace)
    def wrapper(pattern: Any, example_inputs: tuple[Any, ...], is_cuda: bool = False, **kwargs: Any) -> Any:
        try:
            key = (_key(pattern), _key(tuple(example_inputs), inputs=True), bool(is_cuda), _key(kwargs, inputs=True),
                   torch.is_grad_enabled(), torch.is_inference_mode_enabled(), torch.get_default_dtype())
            hash(key)
        except (_Uncacheable, TypeError):
            return trace(pattern, example_inputs, is_cuda, **kwargs)
        graph = _cache.get(key)
        if graph is None:
            graph = trace(pattern, example_inputs, is_cuda, **kwargs)
            if len(_cache) >= MAX_ENTRIES:
                _cache.clear()
            _cache[key] = graph
        return copy.deepcopy(graph)

    wrapper._edgeslim_cached = True  # type: ignore[attr-defined]
    return wrapper


#: ``F.conv*`` → the aten op its patterns contain; torchao's QAT fold runs once per kind.
_CONV_OPS = {"conv1d": "conv1d", "conv2d": "conv2d", "conv_transpose1d": "conv_transpose1d",
             "conv_transpose2d": "conv_transpose2d"}
#: The torchao release whose ``_fold_conv_bn_qat_helper`` :func:`skip_absent_convs` mirrors.
_FOLD_HELPER_TORCHAO = "0.18."


def _has_op(gm: Any, name: str) -> bool:
    packet = getattr(torch.ops.aten, name)
    return any(n.op == "call_function" and getattr(n.target, "overloadpacket", n.target) is packet
               for n in gm.graph.nodes)


def skip_absent_convs(helper: Callable[..., Any], qat_utils: Any) -> Callable[..., Any]:
    """Wrap torchao's ``_fold_conv_bn_qat_helper`` to skip tracing patterns of a convolution kind the graph lacks.

    ``convert_pt2e`` folds batch norm for conv1d, conv2d, conv_transpose1d and conv_transpose2d in
    turn, tracing 24 patterns each; a pattern holding ``aten.conv1d`` cannot match a graph without
    one. For such a kind the wrapper runs the helper's own graph passes (dead-code removal,
    duplicating then merging shared dequantize nodes, recompiles) in the helper's order, without
    the patterns: the graph comes out node for node as the helper leaves it when nothing matches.

    Args:
        helper: torchao's ``_fold_conv_bn_qat_helper(m, conv_fn, example_inputs, is_cuda)``.
        qat_utils: The module holding the helper's dequantize passes.

    Returns:
        The wrapped helper.
    """
    if getattr(helper, "_edgeslim_cached", False):
        return helper

    @functools.wraps(helper)
    def wrapper(m: Any, conv_fn: Any, example_inputs: Any, is_cuda: bool) -> Any:
        name = _CONV_OPS.get(getattr(conv_fn, "__name__", ""))
        if name is None or _has_op(m, name):
            return helper(m, conv_fn, example_inputs, is_cuda)
        m.graph.eliminate_dead_code()
        m.recompile()
        qat_utils._duplicate_dequantize_node(m)
        m.recompile()  # (the helper's pattern loop ran here: with no match it only recompiles)
        m.recompile()
        qat_utils._remove_extra_dequantize(m)
        m.graph.eliminate_dead_code()
        m.recompile()
        return m

    wrapper._edgeslim_cached = True  # type: ignore[attr-defined]
    return wrapper


def install() -> None:
    """Route torchao's pattern tracing through the cache (idempotent; torchao's own modules are imported here).

    On the torchao release it mirrors, the QAT fold also skips the patterns of convolution kinds
    the graph does not hold (:func:`skip_absent_convs`).
    """
    import importlib

    import torchao

    for name in _MODULES:
        module = importlib.import_module(name)
        if hasattr(module, _ATTR):
            setattr(module, _ATTR, cached(getattr(module, _ATTR)))
    qat_utils: Any = importlib.import_module("torchao.quantization.pt2e.qat_utils")
    if torchao.__version__.startswith(_FOLD_HELPER_TORCHAO):
        qat_utils._fold_conv_bn_qat_helper = skip_absent_convs(qat_utils._fold_conv_bn_qat_helper, qat_utils)


def clear() -> None:
    """Drop every cached pattern graph."""
    _cache.clear()
