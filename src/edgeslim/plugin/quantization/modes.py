"""Train/eval switches for exported graphs that keep every batch norm's own arguments.

An exported graph ignores ``.eval()``; torchao's ``move_exported_model_to_eval`` /
``move_exported_model_to_train`` switch dropout and batch norm by rewriting patterns, and its
batch-norm rewrite (torchao 0.18) puts in the pattern's literals: every batch norm's ``eps``
becomes ``1e-5`` and its ``momentum`` ``0.1``, and a batch norm without running statistics gets
``training=False``, which PyTorch refuses (``running_mean must be defined in evaluation mode``).
Such a batch norm is how weight standardisation is written (timm's ``StdConv2d`` /
``ScaledStdConv2d``: ``F.batch_norm(weight.reshape(1, out, -1), None, None, training=True)``);
eager PyTorch normalises with the batch statistics whenever there are no running ones
(``nn.BatchNorm*(track_running_stats=False)`` in eval). Here torchao still switches dropout
(and any batch norm form other than ``aten.batch_norm``), while every ``aten.batch_norm`` node
is held out of its rewrite and only gets its ``training`` flag set: to the mode asked for, and
always ``True`` where both running statistics are ``None``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

_BATCH_NORM = torch.ops.aten.batch_norm.default
_TRAINING = 5  # aten.batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)


def _held_batch_norm(*args: Any) -> Any:
    """``aten.batch_norm`` under another target, so that torchao's pattern rewrite does not match it."""
    return _BATCH_NORM(*args)


def stat_free(node: Node) -> bool:
    """Whether a batch-norm node has neither running mean nor running variance (batch statistics always)."""
    return node.args[3] is None and node.args[4] is None


def set_batch_norm_training(gm: GraphModule, training: bool) -> int:
    """Set the ``training`` flag of every ``aten.batch_norm`` node of ``gm`` (stat-free ones stay ``True``).

    Args:
        gm: An exported (or PT2E-prepared/converted) graph.
        training: Normalise with batch statistics (``True``) or the running ones (``False``).

    Returns:
        The number of batch-norm nodes changed.
    """
    changed = 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in (_BATCH_NORM, _held_batch_norm):
            node.target = _BATCH_NORM
            want = training or stat_free(node)
            if len(node.args) > _TRAINING and node.args[_TRAINING] is not want:
                node.args = (*node.args[:_TRAINING], want, *node.args[_TRAINING + 1:])
                changed += 1
    gm.recompile()
    return changed


def _move(gm: GraphModule, training: bool) -> GraphModule:
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is _BATCH_NORM:
            node.target = _held_batch_norm
    try:
        (move_exported_model_to_train if training else move_exported_model_to_eval)(gm)
    finally:
        set_batch_norm_training(gm, training)
    return gm


def _constant(gm: GraphModule, node: Node, cache: dict[Node, Any]) -> Any:
    """The value of ``node`` if parameters/buffers alone compute it, else raise ``LookupError``."""
    if node in cache:
        return cache[node]
    if node.op == "get_attr":
        value: Any = gm
        for part in str(node.target).split("."):
            value = getattr(value, part)
    elif node.op == "call_function" and node.all_input_nodes:
        args = torch.fx.node.map_arg(node.args, lambda n: _constant(gm, n, cache))
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: _constant(gm, n, cache))
        value = node.target(*args, **kwargs)  # type: ignore[operator]
    else:
        raise LookupError(node.name)
    cache[node] = value
    return value


@torch.no_grad()
def fold_stat_free_batch_norms(gm: GraphModule) -> int:
    """Replace each stat-free batch norm that only parameters reach by its value (a buffer); returns how many.

    That is a weight standardisation: after training (or in PTQ) it is a constant, and convert then
    quantizes the standardised weight as a constant. It also spares torchao's QAT conv-BN folding
    pass, which runs whenever a batch-norm node is left (tens of seconds per model on 2 cores).
    """
    cache: dict[Node, Any] = {}
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != _BATCH_NORM or not stat_free(node):
            continue
        try:
            value = _constant(gm, node, cache)
        except LookupError:
            continue
        name = f"_standardised_{folded}"
        while hasattr(gm, name):
            name += "_"
        gm.register_buffer(name, value.detach().clone())
        with gm.graph.inserting_before(node):
            const = gm.graph.get_attr(name)
        const.meta.update(node.meta)
        node.replace_all_uses_with(const)
        gm.graph.erase_node(node)
        folded += 1
    if folded:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return folded


def to_eval(gm: GraphModule) -> GraphModule:
    """Put an exported graph in eval mode (dropout off, batch norms on running statistics); returns ``gm``."""
    return _move(gm, False)


def to_train(gm: GraphModule) -> GraphModule:
    """Put an exported graph in train mode (dropout on, batch norms on batch statistics); returns ``gm``."""
    return _move(gm, True)


__all__ = ["fold_stat_free_batch_norms", "set_batch_norm_training", "stat_free", "to_eval", "to_train"]
