"""``scaled_dot_product_attention`` written out as matmul / softmax / matmul, for converters without it.

torch's ONNX exporter translates ``aten.scaled_dot_product_attention`` for 4-D inputs only; a model that
runs attention on 5-D tensors (timm NesT: batch, heads, blocks, tokens, channels) stops there. The same
maths with ops every converter knows: ``softmax(q @ kᵀ · scale + mask) @ v``.
"""

from __future__ import annotations

import math

import torch
from torch import fx

_SDPA = torch.ops.aten.scaled_dot_product_attention.default
aten = torch.ops.aten


def decompose_sdpa(gm: fx.GraphModule) -> int:
    """Replace every ``scaled_dot_product_attention`` of ``gm`` (in place) by its maths; the number replaced.

    Causal attention and dropout are left alone (inference graphs have neither; a converter then names the op).
    """
    graph, done = gm.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not _SDPA:
            continue
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        given = {**dict(zip(names, node.args, strict=False)), **node.kwargs}
        q, k, v = given["query"], given["key"], given["value"]
        if given.get("is_causal") or given.get("dropout_p") or given.get("enable_gqa"):
            continue
        width = q.meta["val"].shape[-1] if "val" in q.meta else None
        scale = given.get("scale") or (1 / math.sqrt(width) if width else None)
        if scale is None:
            continue
        mask = given.get("attn_mask")
        with graph.inserting_before(node):
            scores = graph.call_function(aten.mul.Scalar, (graph.call_function(
                aten.matmul.default, (q, graph.call_function(aten.transpose.int, (k, -2, -1)))), float(scale)))
            if mask is not None:
                bool_mask = "val" in mask.meta and mask.meta["val"].dtype == torch.bool
                scores = (graph.call_function(aten.masked_fill.Scalar, (
                    scores, graph.call_function(aten.logical_not.default, (mask,)), float("-inf")))
                    if bool_mask else graph.call_function(aten.add.Tensor, (scores, mask)))
            weights = graph.call_function(aten._softmax.default, (scores, -1, False))
            out = graph.call_function(aten.matmul.default, (weights, v))
        out.meta = dict(node.meta)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        done += 1
    if done:
        graph.lint()
        gm.recompile()
    return done
