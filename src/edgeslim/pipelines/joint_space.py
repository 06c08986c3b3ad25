"""The model as the joint search sees it: channel groups, their width ladders, and per-plan costs.

Parameters, deployed bytes, MACs and the layer geometries of a per-group plan (kept channels
and weight bit-width per group) are computed analytically from torch-pruning's dependency
graph, so the search scores thousands of plans without pruning a model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from edgeslim.errors import ConfigError
from edgeslim.pipelines.latency import LayerGeometry
from edgeslim.plugin.pruning.config import PruneConfig
from edgeslim.plugin.pruning.graph import PRUNABLE, build_graph
from edgeslim.plugin.pruning.importance.base import Batch, LossFn
from edgeslim.plugin.pruning.metrics import Inputs
from edgeslim.plugin.pruning.sensitivity import score
from edgeslim.plugin.pruning.structured import ignored_modules

Widths = dict[str, int]  # group root name -> channels kept
Bits = dict[str, int]  # group root name -> weight bit-width


@dataclass(frozen=True)
class Width:
    """One rung of a group's ladder: channels kept, and the keep ratio / rounding that give it."""

    keep: int
    keep_ratio: float
    round_to: int


@dataclass(frozen=True)
class Group:
    """A channel group (its root module's name), its channel count and its width ladder (widest first).

    ``searched`` is False for a group the search leaves as it is.
    """

    name: str
    channels: int
    ladder: tuple[Width, ...]
    searched: bool = True


@dataclass(frozen=True)
class Layer:
    """A conv/linear layer: its shape, which groups set its input/output channels, its spatial sizes."""

    name: str
    kind: str
    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    in_group: str | None
    out_group: str | None
    hw_in: tuple[int, int]  # input H, W at the latency input size
    out_pixels: int  # output H*W at the example input size (MACs)
    bias: bool = False


@dataclass
class ModelSpace:
    """Groups and layers of a model, with analytic costs of any plan.

    Attributes:
        groups: Prunable groups in graph order.
        layers: Conv/linear layers.
        other: ``(numel, channels, out group)`` of every other parameter tensor (BN scale/shift ...).
        fixed_bits: Bit-width of layers whose output channels belong to no group (the head).
    """

    groups: list[Group]
    layers: list[Layer]
    other: list[tuple[int, int, str | None]] = field(default_factory=list)
    fixed_bits: int = 8

    def group(self, name: str) -> Group:
        """The group rooted at ``name``."""
        for g in self.groups:
            if g.name == name:
                return g
        raise ConfigError(f"joint search: no channel group rooted at {name!r}")

    def full(self) -> Widths:
        """The unpruned widths."""
        return {g.name: g.channels for g in self.groups}

    def shape(self, layer: Layer, widths: Widths) -> tuple[int, int, int]:
        """``(cin, cout, groups)`` of ``layer`` under ``widths``."""
        cin = widths.get(layer.in_group, layer.cin) if layer.in_group else layer.cin
        cout = widths.get(layer.out_group, layer.cout) if layer.out_group else layer.cout
        if layer.groups > 1 and layer.groups == layer.cin == layer.cout:
            # depthwise: torch-pruning couples its input and output channels but records only the
            # output dependency (no in_group), so both follow the one group that is known
            width = cout if layer.out_group else cin
            return width, width, width
        return cin, cout, layer.groups

    def weight_numel(self, layer: Layer, widths: Widths) -> int:
        """Elements of the layer's weight tensor."""
        cin, cout, groups = self.shape(layer, widths)
        return cout * (cin // groups) * layer.kernel[0] * layer.kernel[1]

    def params(self, widths: Widths) -> int:
        """Parameters of the model pruned to ``widths``."""
        total = 0
        for layer in self.layers:
            total += self.weight_numel(layer, widths)
            if layer.bias:
                total += self.shape(layer, widths)[1]
        for numel, channels, group in self.other:
            total += numel if group is None else numel // channels * widths.get(group, channels)
        return total

    def nbytes(self, widths: Widths, bits: Bits) -> int:
        """Deployed weight bytes: conv/linear weights at their group's bit-width, the rest at 4 bytes."""
        total = 0.0
        for layer in self.layers:
            b = bits.get(layer.out_group, self.fixed_bits) if layer.out_group else self.fixed_bits
            total += self.weight_numel(layer, widths) * b / 8
            if layer.bias:
                total += 4 * self.shape(layer, widths)[1]
        for numel, channels, group in self.other:
            total += 4 * (numel if group is None else numel // channels * widths.get(group, channels))
        return round(total)

    def macs(self, widths: Widths) -> int:
        """Multiply-accumulates of the conv/linear layers for one example input."""
        return sum(self.weight_numel(layer, widths) * layer.out_pixels for layer in self.layers)

    def geometries(self, widths: Widths) -> list[LayerGeometry]:
        """The latency-table geometry of every layer under ``widths``."""
        out = []
        for layer in self.layers:
            cin, cout, groups = self.shape(layer, widths)
            out.append(LayerGeometry(layer.kind, cin, cout, layer.kernel, layer.stride, layer.padding, groups,
                                     *layer.hw_in))
        return out


def ladder(channels: int, keep_ratios: Sequence[float], round_to: Sequence[int]) -> tuple[Width, ...]:
    """Distinct kept-channel counts of a group, widest first (the full width is always the first)."""
    rungs: dict[int, Width] = {channels: Width(channels, 1.0, 1)}
    for r in sorted(keep_ratios, reverse=True):
        for rt in sorted(round_to):
            if r >= 1.0:
                continue
            keep = max(rt, int(channels * r) // rt * rt) if channels >= rt else channels
            if 0 < keep < channels:
                rungs[keep] = Width(keep, r, rt)  # the larger rounding wins a tie (hardware-friendlier)
    return tuple(rungs[k] for k in sorted(rungs, reverse=True))


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _spatial(model: nn.Module, x: torch.Tensor, names: dict[nn.Module, str]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """``{layer name: (input shape, output shape)}`` of every conv/linear layer for input ``x``."""
    seen: dict[str, tuple[tuple[int, ...], ...]] = {}

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen.setdefault(names[mod], (tuple(inputs[0].shape), tuple(output.shape)))

    hooks = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _layer(name: str, mod: nn.Module, shape_in: tuple[int, ...], shape_out: tuple[int, ...], in_group: str | None,
           out_group: str | None) -> Layer:
    """The :class:`Layer` of a Conv2d/Linear module seen with input/output shapes."""
    if isinstance(mod, nn.Linear):
        return Layer(name, "linear", mod.in_features, mod.out_features, (1, 1), (1, 1), (0, 0), 1, in_group,
                     out_group, (1, 1), 1, mod.bias is not None)
    if not isinstance(mod, nn.Conv2d):
        raise ConfigError(f"joint search: layer {name!r} ({type(mod).__name__}) is not Conv2d or Linear; latency "
                          "tables cover those only: list it in ignored_layers or use another search")
    kernel = _pair(mod.kernel_size)
    pad = mod.padding
    padding = _pair(pad) if not isinstance(pad, str) else (kernel[0] // 2, kernel[1] // 2) if pad == "same" else (0, 0)
    return Layer(name, "conv", mod.in_channels, mod.out_channels, kernel, _pair(mod.stride), padding, mod.groups,
                 in_group, out_group, (int(shape_in[2]), int(shape_in[3])), int(shape_out[2] * shape_out[3]),
                 mod.bias is not None)


def analyse(model: nn.Module, example_inputs: Inputs, input_size: tuple[int, int], keep_ratios: Sequence[float],
            round_to: Sequence[int], fixed_bits: int = 8) -> ModelSpace:
    """Trace ``model`` into its groups, layers and ladders (the classifier head is never pruned)."""
    work = copy.deepcopy(model).eval()
    x = example_inputs[0] if isinstance(example_inputs, tuple) else example_inputs
    names = {m: n for n, m in work.named_modules()}
    dg = build_graph(work, example_inputs)
    groups: list[Group] = []
    in_group: dict[str, str] = {}
    out_group: dict[str, str] = {}
    for grp in dg.get_all_groups(ignored_layers=ignored_modules(work, PruneConfig()), root_module_types=list(PRUNABLE)):
        root = names[grp[0].dep.target.module]
        channels = len(grp[0].idxs)
        groups.append(Group(root, channels, ladder(channels, keep_ratios, round_to)))
        for dep, _ in grp:
            name = names.get(dep.target.module)
            if name is None:
                continue
            if dg.is_out_channel_pruning_fn(dep.handler):
                out_group.setdefault(name, root)
            elif dg.is_in_channel_pruning_fn(dep.handler):
                in_group.setdefault(name, root)
    layer_mods: dict[nn.Module, str] = {m: n for m, n in names.items() if isinstance(m, PRUNABLE)}
    big = _spatial(work, torch.randn(1, x.shape[1], *input_size), layer_mods)
    small = _spatial(work, x[:1], layer_mods)
    layers: list[Layer] = []
    other: list[tuple[int, int, str | None]] = []
    for mod, name in names.items():
        own = list(mod.parameters(recurse=False))
        if isinstance(mod, PRUNABLE) and name in big:  # (a layer that never runs is skipped)
            layers.append(_layer(name, mod, big[name][0], small[name][1], in_group.get(name), out_group.get(name)))
            own = [p for p in own if p is not getattr(mod, "weight", None) and p is not getattr(mod, "bias", None)]
        for p in own:
            g = out_group.get(name)
            channels = next((grp.channels for grp in groups if grp.name == g), 0) if g else 0
            other.append((p.numel(), channels or 1, g if channels else None))
    return ModelSpace(groups, layers, other, fixed_bits)


@torch.no_grad()
def bit_damage(model: nn.Module, space: ModelSpace, bits: int, batches: Sequence[Batch], loss_fn: LossFn) -> dict[str, float]:
    """Loss increase when the weights of each group's layers alone are rounded to ``bits`` (per channel).

    The weights of the layers producing the group's channels are fake-quantized (symmetric,
    per output channel) on a copy, the loss is measured on ``batches``, and restored.
    """
    work = copy.deepcopy(model).eval()
    _, base = score(work, batches, loss_fn)
    mods = dict(work.named_modules())
    qmax = 2 ** (bits - 1) - 1
    out: dict[str, float] = {}
    for g in space.groups:
        saved = []
        for layer in space.layers:
            if layer.out_group == g.name:
                w = mods[layer.name].weight
                saved.append((w, w.data.clone()))
                scale = w.data.abs().flatten(1).amax(1).clamp_min(1e-12) / qmax
                shape = (-1,) + (1,) * (w.dim() - 1)
                w.data = (w.data / scale.view(shape)).round().clamp(-qmax - 1, qmax) * scale.view(shape)
        _, loss = score(work, batches, loss_fn)
        for w, orig in saved:
            w.data = orig
        out[g.name] = max(loss - base, 0.0)
    return out
