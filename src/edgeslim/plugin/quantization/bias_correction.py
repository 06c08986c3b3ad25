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
    """Forward hooks on the input observers of conv/linear layers recording per-channel input means."""

    def __init__(self, prepared: GraphModule) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.layer_of: dict[str, list[str]] = {}
        self._handles: list[RemovableHandle] = []
        for node in prepared.graph.nodes:
            if node.op == "call_function" and node.target in WEIGHTED and isinstance(node.args[0], Node):
                src = node.args[0]
                if src.op == "call_module":
                    self.layer_of.setdefault(str(src.target), []).append(module_name(node))
        for target in self.layer_of:
            mod = prepared.get_submodule(target)
            self._handles.append(mod.register_forward_hook(self._hook(target)))

    def _hook(self, target: str) -> Any:
        def hook(_m: nn.Module, _a: Any, out: torch.Tensor) -> None:
            x = out.detach()
            dims = [d for d in range(x.dim()) if d != (1 if x.dim() > 2 else x.dim() - 1)]
            s = x.to(torch.float64).sum(dim=dims)
            n = x.numel() // s.numel()
            self.sums[target] = self.sums[target] + s if target in self.sums else s
            self.counts[target] = self.counts.get(target, 0) + n

        return hook

    def finish(self) -> dict[str, torch.Tensor]:
        """Remove the hooks; ``{layer name: mean input per channel}``."""
        for h in self._handles:
            h.remove()
        out: dict[str, torch.Tensor] = {}
        for target, layers in self.layer_of.items():
            if target in self.sums:
                mean = (self.sums[target] / max(self.counts[target], 1)).to(torch.float32)
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
