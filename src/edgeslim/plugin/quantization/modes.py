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


def to_eval(gm: GraphModule) -> GraphModule:
    """Put an exported graph in eval mode (dropout off, batch norms on running statistics); returns ``gm``."""
    return _move(gm, False)


def to_train(gm: GraphModule) -> GraphModule:
    """Put an exported graph in train mode (dropout on, batch norms on batch statistics); returns ``gm``."""
    return _move(gm, True)


__all__ = ["set_batch_norm_training", "stat_free", "to_eval", "to_train"]
