"""The per-process cache of torchao's traced rewrite patterns: same graphs, traced once, copies handed out."""

from __future__ import annotations

from typing import Any

import torch
import torchao.quantization.pt2e.utils as pt2e_utils
from torch.nn import functional as F
from torchao.quantization.pt2e import qat_utils
from torchao.quantization.pt2e.export_utils import WrapperModule

import edgeslim.plugin.quantization  # noqa: F401  (installs the cache)
from edgeslim.plugin.quantization import pattern_cache


def _traced(calls: list[Any]) -> Any:
    """torchao's own tracing function, counting its calls, wrapped by the cache."""
    original = pt2e_utils._get_aten_graph_module_for_pattern.__wrapped__

    def trace(pattern: Any, example_inputs: Any, is_cuda: bool = False, **kwargs: Any) -> Any:
        calls.append(pattern)
        return original(pattern, example_inputs, is_cuda, **kwargs)

    return pattern_cache.cached(trace)


def _pattern(training: bool) -> WrapperModule:
    def dropout(x: torch.Tensor) -> torch.Tensor:  # a new function object each time, like torchao's patterns
        return F.dropout(x, p=0.5, training=training)

    return WrapperModule(dropout)


def test_installed_in_torchao_and_idempotent() -> None:
    for fn in (pt2e_utils._get_aten_graph_module_for_pattern, qat_utils._get_aten_graph_module_for_pattern):
        assert getattr(fn, "_edgeslim_cached", False) is True
    before = qat_utils._get_aten_graph_module_for_pattern
    pattern_cache.install()
    assert qat_utils._get_aten_graph_module_for_pattern is before


def test_each_pattern_is_traced_once_and_every_caller_gets_its_own_copy() -> None:
    pattern_cache.clear()
    calls: list[Any] = []
    trace = _traced(calls)
    x = (torch.randn(1, 4),)
    first, second = trace(_pattern(True), x), trace(_pattern(True), (torch.randn(1, 4),))
    assert len(calls) == 1  # same code, same closed-over value, same input shape: traced once
    assert first is not second and first.graph is not second.graph
    assert first.code == second.code and "dropout" in first.code
    node = next(n for n in second.graph.nodes if n.op == "call_function")
    node.replace_all_uses_with(node.args[0])
    second.graph.erase_node(node)
    second.recompile()
    assert "dropout" not in second.code
    assert "dropout" in trace(_pattern(True), x).code  # an edited copy changes nothing for the next caller
    eval_graph = trace(_pattern(False), x)  # another closed-over value: another graph
    assert len(calls) == 2 and "dropout.default(args_0, 0.5, False)" in eval_graph.code
    assert "dropout.default(args_0, 0.5, True)" in first.code
    trace(_pattern(True), (torch.randn(2, 4),))  # another input shape: traced again
    assert len(calls) == 3


def test_a_pattern_closing_over_a_tensor_is_traced_every_time() -> None:
    calls: list[Any] = []
    trace = _traced(calls)
    scale = torch.tensor(2.0)

    def scaled(x: torch.Tensor) -> torch.Tensor:
        return x * scale

    for _ in range(2):
        out = trace(WrapperModule(scaled), (torch.randn(1, 4),))
    assert len(calls) == 2
    assert torch.equal(out(torch.ones(1, 4)), torch.full((1, 4), 2.0))


def test_fold_of_an_absent_conv_kind_leaves_the_graph_as_torchao_does() -> None:
    import copy

    from torch import nn
    from torchao.quantization.pt2e.convert import _convert_to_reference_decomposed_fx

    from edgeslim.plugin.quantization.api import prepare_qat

    helper = qat_utils._fold_conv_bn_qat_helper
    assert getattr(helper, "_edgeslim_cached", False) is True  # installed on torchao 0.18
    net = torch.nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
    prepared = prepare_qat(net, (torch.randn(1, 3, 8, 8),), "int8")
    prepared(torch.randn(2, 3, 8, 8))
    ref = _convert_to_reference_decomposed_fx(prepared)
    inputs = (torch.randn(1, 1, 3), torch.randn(1, 1, 1), *(torch.randn(1) for _ in range(4)))
    want = helper.__wrapped__(copy.deepcopy(ref), F.conv1d, inputs, is_cuda=False)  # torchao's, 24 patterns traced
    got = helper(copy.deepcopy(ref), F.conv1d, inputs, is_cuda=False)  # no conv1d in the graph: none traced
    assert got.code == want.code and "dequantize_per_tensor" in got.code
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(got(x), want(x))
