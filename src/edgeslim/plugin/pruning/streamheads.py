"""Attentions whose heads can only go together with the embedding (residual stream) width.

Some attentions merge their heads back with the width of their input, not with a head count:
``x.transpose(1, 2).reshape(B, N, C)`` where ``B, N, C = x.shape`` (timm PVT v2, the relpos ViT, CoaT),
or shrink tokens with a layer reshaped to that width (``sr(x).reshape(B, C, -1)``). Removing a head
alone breaks their forward, but removing ``k`` heads while the stream they read loses ``k·head_dim``
channels keeps it running: ``heads·head_dim`` stays equal to ``C``.

:func:`.heads.stream_removable` tries that on a copy of the attention module (one head removed, its input and
every layer of the module that reads or writes the stream width narrowed by ``head_dim``). Only the
COUNT is coupled: which stream channels go is decided by the importance of the stream's own group, the
heads by their own score. The pruner then gives every group of such a stream (and of the module's
layers that write the stream width, ``sr``) the ratio that removes exactly ``k·head_dim`` channels, with
``k`` the heads every attention on that stream loses (see ``TransformerPruner``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from edgeslim.plugin.pruning.headtrace import LAYERS

#: Attentions on one stream, the layers writing it (and their inner widths), the MLPs (first layers) reading it.
Stream = tuple[list[Any], list[nn.Module], list[nn.Module]]
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def _width(layer: Any, out: bool) -> int:
    if isinstance(layer, nn.Linear):
        return int(layer.out_features if out else layer.in_features)
    return int(layer.out_channels if out else layer.in_channels)


def slice_in(layer: Any, keep: list[int]) -> None:
    """Keep the input channels ``keep`` of a Linear/conv, in place."""
    idx = torch.tensor(keep, dtype=torch.long, device=layer.weight.device)
    layer.weight = nn.Parameter(layer.weight.index_select(1, idx).detach(), requires_grad=layer.weight.requires_grad)
    if isinstance(layer, nn.Linear):
        layer.in_features = len(keep)
    else:
        layer.in_channels = len(keep)


def narrow(x: Any, width: int, keep: list[int]) -> Any:
    """``x`` with its channel dimension (the last for tokens ``(B, N, C)``, else the second) narrowed."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        return x
    dim = x.dim() - 1 if x.dim() == 3 else 1
    if x.shape[dim] != width:
        return x
    return x.index_select(dim, torch.tensor(keep, dtype=torch.long, device=x.device))


def slice_out(m: Any, keep: list[int]) -> None:
    """Keep the output channels ``keep`` of a Linear/conv/norm, in place."""
    idx = torch.tensor(keep, dtype=torch.long, device=next(iter(m.parameters())).device)
    for name in ("weight", "bias"):
        t = getattr(m, name, None)
        if isinstance(t, torch.Tensor):
            setattr(m, name, nn.Parameter(t.index_select(0, idx).detach(), requires_grad=t.requires_grad))
    for name in ("running_mean", "running_var"):
        t = getattr(m, name, None)
        if isinstance(t, torch.Tensor):
            setattr(m, name, t.index_select(0, idx))
    for attr in ("out_features", "out_channels", "num_features"):
        if isinstance(getattr(m, attr, None), int):
            setattr(m, attr, len(keep))
    if isinstance(m, nn.LayerNorm):
        m.normalized_shape = (len(keep),)


def stream_layers(att: Any) -> tuple[int, list[str]] | None:
    """The stream width ``C`` of ``att`` (a :class:`.heads.Attention`) and the names (relative to its owner) of
    the layers inside it other than its consumer whose output has that width (PVT's ``sr``); ``None`` when its
    heads cannot be coupled with its input width (``heads·head_dim != C``, one head, grouped convs)."""
    width = _width(att.layers[0], out=False)
    if att.consumer is None or att.heads < 2 or att.heads * att.head_dim != width:
        return None
    if _width(att.consumer, out=True) != width:
        return None
    names = {m: n for n, m in att.owner.named_modules()}
    skip = {names[m] for m in att.layers} | set(att.head_layers)
    layers = {n: m for n, m in att.owner.named_modules() if isinstance(m, LAYERS) and n not in skip}
    if any(getattr(m, "groups", 1) != 1 for m in layers.values()):
        return None  # a grouped conv ties channels to positions the count alone does not keep
    return width, [n for n, m in layers.items() if m is not att.consumer and _width(m, out=True) == width]


def narrow_stream(att: Any, work: nn.Module, inner: list[str], width: int) -> list[int]:
    """Narrow the stream inside ``work`` (a copy of ``att.owner`` that lost one head) by ``head_dim``: the input
    columns of every layer reading width ``C``, the output rows of the consumer, ``inner`` and the norms over
    ``C`` (not the projections' own norms). Returns the stream channels kept (for the inputs, :func:`narrow`)."""
    names = {m: n for n, m in att.owner.named_modules()}
    keep = list(range(att.head_dim, width))
    followers = {names[m] for m in att.followers if m in names}
    for n, m in att.owner.named_modules():
        if isinstance(m, LAYERS) and m is not att.consumer and n not in att.head_layers and \
                _width(m, out=False) == width:
            slice_in(work.get_submodule(n), keep)
        elif isinstance(m, _NORMS) and n not in followers and _norm_width(m) == width:
            slice_out(work.get_submodule(n), keep)
    for n in [names[att.consumer], *inner]:
        slice_out(work.get_submodule(n), keep)
    return keep


def _norm_width(norm: Any) -> int:
    w = getattr(norm, "weight", None)
    return int(w.shape[0]) if isinstance(w, torch.Tensor) else -1


def stream_groups(pruner: tp.pruner.BasePruner, attentions: Sequence[Any], mlps: Sequence[nn.Module]
                  ) -> list[Stream]:
    """The attentions whose heads go with their input width (``stream``), by the group of that width in
    ``pruner``'s graph; with each, the layers whose output channels are in that group or in the groups of the
    attentions' ``inner`` layers (they lose ``k·head_dim`` channels), and the MLPs (first layers) reading it."""
    dg = pruner.DG
    found: dict[frozenset[int], Stream] = {}
    for att in attentions:
        if not att.stream or att.consumer is None:
            continue
        stream = dg.get_pruning_group(att.consumer, dg.get_pruner_of_module(att.consumer).prune_out_channels, [0])
        groups = [_out_layers(dg, layer) for layer in [att.consumer, *map(att.owner.get_submodule, att.inner)]]
        entry = found.setdefault(frozenset(map(id, groups[0])), ([], [], []))
        entry[0].append(att)
        entry[1].extend(m for outs in groups for m in outs if m not in entry[1])
        entry[2].extend(d.target.module for d, _ in stream if d.target.module in mlps and
                        not dg.is_out_channel_pruning_fn(d.handler) and d.target.module not in entry[2])
    return list(found.values())


def _out_layers(dg: Any, layer: nn.Module) -> list[nn.Module]:
    """The layers whose output channels are in the group of ``layer``'s output channels."""
    group = dg.get_pruning_group(layer, dg.get_pruner_of_module(layer).prune_out_channels, [0])
    return list(dict.fromkeys(d.target.module for d, _ in group if dg.is_out_channel_pruning_fn(d.handler)
                              and isinstance(d.target.module, tp.ops.TORCH_LINEAR | tp.ops.TORCH_CONV)))


def stream_cut(streams: Sequence[Stream], ratio: float, given: Mapping[nn.Module, float], *, heads: bool,
               kept: Sequence[nn.Module]) -> dict[nn.Module, float]:
    """Per stream (see :func:`stream_groups`): the share of its width that goes, ``k·head_dim / C`` with ``k`` the
    fewest heads its attentions would lose at ``ratio`` (``given`` per first projection; 0 when heads are not
    pruned, its attentions differ in ``head_dim`` or a layer writing the stream is in ``kept``), keyed by its
    attentions' first projections and its MLPs' first layers."""
    out: dict[nn.Module, float] = {}
    for atts, outs, mlps in streams:
        k = min(min(math.floor(given.get(a.layers[0], ratio) * a.heads + 1e-9), a.heads - 1) for a in atts)
        if not heads or len({a.head_dim for a in atts}) > 1 or any(m in kept for m in outs):
            k = 0
        share = k * atts[0].head_dim / atts[0].stream
        out.update({**dict.fromkeys((a.layers[0] for a in atts), share), **dict.fromkeys(mlps, share)})
    return out
