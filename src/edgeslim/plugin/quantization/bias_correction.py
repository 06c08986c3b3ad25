"""Empirical bias correction for coarse weight schemes (PTQ).

Quantizing a weight ``W`` to ``Wq`` shifts each output channel's mean by ``(Wq - W) · E[x]``.
During calibration the per-channel mean of every conv/linear input is recorded; at convert
time the shift is subtracted from the layer's (float) bias, which the converted model keeps
in float — so the correction is exact in the deployed graph and costs nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule, Node
from torch.utils.hooks import RemovableHandle

from edgeslim.plugin.quantization.quantizer import WEIGHTED, module_name


class InputMeans:
    """Forward hooks on the input observers of conv/linear layers recording per-channel input means.

    One observer module can run at several places of the graph (an int8 tensor that is only permuted or
    reshaped shares its producer's observer), so a call is matched to its graph node by its rank among that
    module's calls in one forward pass; the channel axis is the layer's (1 for a conv, the last for a linear).
    """

    def __init__(self, prepared: GraphModule) -> None:
        self.sums: dict[tuple[str, int], torch.Tensor] = {}
        self.counts: dict[tuple[str, int], int] = {}
        self.layer_of: dict[tuple[str, int], list[str]] = {}
        self.axis_of: dict[tuple[str, int], int] = {}
        self._calls: dict[str, int] = {}  # observer calls so far in the current forward pass
        calls: dict[str, int] = {}
        rank: dict[Node, tuple[str, int]] = {}
        canonical: dict[int, str] = {}  # a shared observer is one module registered under several names
        for node in prepared.graph.nodes:
            if node.op == "call_module":
                target = canonical.setdefault(id(prepared.get_submodule(str(node.target))), str(node.target))
                rank[node] = (target, calls.get(target, 0))
                calls[target] = rank[node][1] + 1
        for node in prepared.graph.nodes:
            if node.op == "call_function" and node.target in WEIGHTED and isinstance(node.args[0], Node) and node.args[0] in rank:
                key = rank[node.args[0]]
                self.layer_of.setdefault(key, []).append(module_name(node))
                self.axis_of[key] = -1 if node.target == torch.ops.aten.linear.default else 1
        self._handles: list[RemovableHandle] = [prepared.register_forward_pre_hook(self._reset)]
        for target in {t for t, _ in self.layer_of}:
            mod = prepared.get_submodule(target)
            self._handles.append(mod.register_forward_hook(self._hook(target)))

    def _reset(self, _m: nn.Module, _a: Any) -> None:
        self._calls = {}

    def _hook(self, target: str) -> Any:
        def hook(_m: nn.Module, _a: Any, out: torch.Tensor) -> None:
            key = (target, self._calls.get(target, 0))
            self._calls[target] = key[1] + 1
            if key not in self.layer_of:
                return
            x = out.detach()
            axis = self.axis_of[key] % x.dim()
            s = x.to(torch.float64).sum(dim=[d for d in range(x.dim()) if d != axis])
            n = x.numel() // s.numel()
            self.sums[key] = self.sums[key] + s if key in self.sums else s
            self.counts[key] = self.counts.get(key, 0) + n

        return hook

    def finish(self) -> dict[str, torch.Tensor]:
        """Remove the hooks; ``{layer name: mean input per channel}``."""
        for h in self._handles:
            h.remove()
        out: dict[str, torch.Tensor] = {}
        for key, layers in self.layer_of.items():
            if key in self.sums:
                mean = (self.sums[key] / max(self.counts[key], 1)).to(torch.float32).cpu()  # convert runs on the CPU
                for layer in layers:
                    out[layer] = mean
        return out


def output_shift(delta: torch.Tensor, mean_in: torch.Tensor) -> torch.Tensor:
    """Per-output-channel mean shift caused by the weight error ``delta`` for input means ``mean_in``."""
    if delta.dim() == 2:
        return delta @ mean_in
    c_out, cin_g = delta.shape[0], delta.shape[1]
    groups = mean_in.numel() // cin_g
    per_in = delta.reshape(c_out, cin_g, -1).sum(dim=2)  # [C_out, C_in/g]
    group_of = torch.arange(c_out) // max(c_out // groups, 1)
    return (per_in * mean_in.reshape(groups, cin_g)[group_of]).sum(dim=1)


def correct_bias(prepared: GraphModule, layer_node: Node, shift: torch.Tensor) -> bool:
    """Subtract ``shift`` from the bias parameter of a conv/linear node; False if it has no bias constant."""
    bias = layer_node.args[2] if len(layer_node.args) > 2 else None
    if not isinstance(bias, Node) or bias.op != "get_attr":
        return False
    owner, _, leaf = str(bias.target).rpartition(".")
    param = getattr(prepared.get_submodule(owner) if owner else prepared, leaf)
    param.data.sub_(shift.to(param.dtype).reshape(param.shape))
    return True


__all__ = ["InputMeans", "correct_bias", "output_shift"]
