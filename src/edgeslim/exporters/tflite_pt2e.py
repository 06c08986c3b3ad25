"""Carry an edgeslim-quantized (PT2E-converted) graph over to TFLite with its own scales.

The converted graph keeps its weights as folded int8 constants, which litert-torch cannot lower
(``stablehlo.uniform_dequantize`` wants a quantized tensor type). :func:`unfold_weights`
rewrites each ``dequantize_per_channel(int8 constant)`` as
``dequantize(quantize(float constant))`` — exact, since the float constant is the dequantized
int8 weight — and litert-torch's STATIC QDQ conversion then fuses every Q/DQ pair into int8
TFLite kernels carrying edgeslim's scales and zero points (no re-calibration).

A layer whose output the PT2E graph leaves in float (the classifier at the end: no observer on
the model's output) keeps float compute in TFLite too, as in the PyTorch graph.

What is carried over: int8 weights (per channel) with int8 activations, per layer (mixed
precision included). 16-bit activations (16x8) are refused: litert-torch's conversion of their
Q/DQ pairs computed wrong outputs here (int32 biases, cosine 0.39 against the PyTorch graph);
the float model's ``--quant w8a16`` route (ai-edge-quantizer) is the TFLite 16x8 path. Grid schemes (log2, codebook, pwl) whose levels sit on
the int8 grid are carried over as int8 weights (exact values, one byte each: TFLite has no
4-bit codes with a codebook). :func:`check_representable` refuses the rest — weights wider than
8 bits, int16 activations, log2 activations (their snap op has no TFLite kernel) — naming the
layer and the scheme.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch.fx import GraphModule, Node

from edgeslim.exporters.errors import ExportConfigError

_Q = torch.ops.quantized_decomposed


def _attr(gm: GraphModule, node: Node) -> Any:
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj


def _layer_of(node: Node) -> str:
    """The module a quantize/dequantize node belongs to: its own, else the first module it feeds."""
    if node.op == "call_function" and node.args and isinstance(node.args[0], Node) and node.args[0].op == "placeholder":
        return f"(the model input {node.args[0].name})"
    frontier, seen = [node], set()
    while frontier:
        cur = frontier.pop(0)
        stack = cur.meta.get("nn_module_stack") or {}
        if stack and cur is not node:
            return str(list(stack.values())[-1][0]) or "<top-level>"
        seen.add(cur)
        frontier += [u for u in cur.users if u not in seen]
    return node.name


def check_representable(gm: GraphModule) -> None:
    """Raise :class:`ExportConfigError` for what TFLite cannot represent (names layer and scheme)."""
    for node in gm.graph.nodes:
        quant_op = node.op == "call_function" and "quantize_per_tensor" in str(node.target) and len(node.args) >= 6
        if quant_op and node.args[5] == torch.int16:
            raise ExportConfigError(
                f"layer {_layer_of(node)} has int16 activations: litert-torch's Q/DQ conversion of 16-bit "
                "activation graphs computes wrong outputs (measured: cosine 0.39 against the PyTorch graph), so "
                "edgeslim does not carry them over. Export the float model with --quant w8a16 (ai-edge-quantizer's "
                "16x8 recipe), or export this quantized model to ONNX"
            )
        if node.op == "get_attr" and str(node.target).startswith("edgeslim_log2_act"):
            raise ExportConfigError(
                f"layer {_layer_of(node)} has log2 activations (a snap op before an int16 Q/DQ pair), which TFLite "
                "cannot represent: export this model to ONNX, or re-quantize it with int8/w8a16 activations for TFLite"
            )
        if node.op == "call_function" and "dequantize_per_channel" in str(node.target):
            src = node.args[0]
            if isinstance(src, Node) and src.op == "get_attr":
                q = _attr(gm, src)
                if isinstance(q, torch.Tensor) and q.dtype not in (torch.int8, torch.uint8):
                    raise ExportConfigError(
                        f"layer {_layer_of(node)} has {q.dtype} weights, which TFLite cannot represent (int8 weights "
                        "only, with int8 or int16 activations): export it to ONNX, or quantize it as int8 or w8a16"
                    )


def unfold_weights(gm: GraphModule) -> GraphModule:
    """A copy of ``gm`` whose int8 weight constants are float constants behind a quantize op (same outputs)."""
    out = copy.deepcopy(gm)
    graph = out.graph
    for i, node in enumerate(list(graph.nodes)):
        if not (node.op == "call_function" and "dequantize_per_channel" in str(node.target)):
            continue
        src = node.args[0]
        if not (isinstance(src, Node) and src.op == "get_attr"):
            continue
        q = _attr(out, src)
        if not (isinstance(q, torch.Tensor) and q.dtype == torch.int8):
            continue
        args = [_attr(out, a) if isinstance(a, Node) else a for a in node.args]
        name = f"edgeslim_unfolded_weight_{i}"
        out.register_buffer(name, node.target(*args, **node.kwargs))
        with graph.inserting_before(node):
            fnode = graph.get_attr(name)
            qnode = graph.call_function(_Q.quantize_per_channel.default, (fnode, *node.args[1:]))
        node.replace_input_with(src, qnode)
    graph.eliminate_dead_code()
    out.recompile()
    return out


def pt2e_to_tflite(gm: GraphModule, example: torch.Tensor, convert: Callable[[torch.nn.Module, Any], bytes]) -> bytes:
    """Convert an edgeslim-quantized graph to a fully integer TFLite flatbuffer.

    Args:
        gm: The converted PT2E graph.
        example: One NCHW example (its batch size is the model's fixed batch).
        convert: ``(module, litert quant_config) -> flatbuffer bytes`` (the TFLite exporter's
            :func:`~edgeslim.exporters.tflite.torch_to_tflite`, which handles layout and errors).
    """
    from edgeslim.quiet import quiet_imports

    with quiet_imports("litert_torch"):
        from litert_torch.quantize import pt2e_quantizer as pq
        from litert_torch.quantize import quant_config as qc

    check_representable(gm)
    unfolded = unfold_weights(gm)
    x = example[:1].expand(example.shape[0], *example.shape[1:]).contiguous()
    with torch.no_grad():
        if not torch.equal(unfolded(x), gm(x)):
            raise ExportConfigError("unfolding the int8 weights changed the model's outputs: please report this model")
    # The quantizer is not run: it only tells the converter to fuse the graph's Q/DQ pairs (STATIC mode).
    cfg = qc.QuantConfig(pt2e_quantizer=pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_dynamic=False)))
    return convert(unfolded, cfg)


__all__ = ["check_representable", "pt2e_to_tflite", "unfold_weights"]
