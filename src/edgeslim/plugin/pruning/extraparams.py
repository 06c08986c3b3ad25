"""Parameters a layer subclass adds beside ``weight`` and ``bias``, one value per output channel.

timm's ``ScaledStdConv2d`` (NFNets) keeps a ``gain`` of shape ``[out, 1, 1, 1]`` that scales its
standardised weight; torch-pruning's conv/linear pruners cut ``weight`` and ``bias`` only, so after
a group removes output channels such a parameter still has the old count and the forward breaks.
Any direct parameter of a conv/linear layer (other than ``weight``/``bias``) whose first dimension is
the layer's output width is cut with the same channels, right after the group that removed them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeslim.plugin.pruning.headtrace import LAYERS


def _out_width(layer: Any) -> int:
    return int(layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)


def extra_params(layer: nn.Module) -> list[str]:
    """Names of ``layer``'s own parameters, other than ``weight``/``bias``, with one row per output channel."""
    if not isinstance(layer, LAYERS) or getattr(layer, "transposed", False):
        return []
    width = _out_width(layer)
    return [n for n, p in layer._parameters.items()
            if n not in ("weight", "bias") and p is not None and p.dim() >= 1 and p.shape[0] == width]


def pending(group: Any, is_out_fn: Any) -> list[tuple[nn.Module, list[str], list[int]]]:
    """The layers of ``group`` whose output channels it removes and that have extra parameters (before pruning)."""
    out = []
    for dep, idxs in group:
        layer = dep.target.module
        names = extra_params(layer) if is_out_fn(dep.handler) else []
        if names:
            out.append((layer, names, [int(i) for i in idxs]))
    return out


def cut(todo: list[tuple[nn.Module, list[str], list[int]]]) -> None:
    """After the group was pruned: cut the same output channels from each extra parameter."""
    for layer, names, idxs in todo:
        drop = set(idxs)
        for name in names:
            p = layer._parameters[name]
            if p is None or p.shape[0] == _out_width(layer):
                continue  # already cut (or never had the old width)
            keep = torch.tensor([i for i in range(p.shape[0]) if i not in drop], dtype=torch.long, device=p.device)
            with torch.no_grad():
                layer._parameters[name] = nn.Parameter(p.index_select(0, keep), requires_grad=p.requires_grad)


__all__ = ["cut", "extra_params", "pending"]
