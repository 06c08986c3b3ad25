"""Size and cost of a model: parameters, MACs, bytes, and a per-layer before/after report."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgeslim.config import serializable, to_data

Inputs = torch.Tensor | tuple[torch.Tensor, ...]


@serializable()
@dataclass(frozen=True)
class ModelStats:
    """Parameters, multiply-accumulates (one forward of the example inputs) and fp32 bytes."""

    params: int
    macs: int
    bytes: int
    nonzero_params: int

    def to_dict(self) -> dict[str, int]:
        """As a plain dict (:func:`edgeslim.config.to_data`, untagged)."""
        data: dict[str, int] = to_data(self, tagged=False)
        return data


def state_bytes(model: nn.Module) -> int:
    """Bytes of every tensor in the state dict (parameters and buffers) at their dtype."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))


ForwardFn = Callable[[nn.Module, Any], Any]


class Called(nn.Module):
    """``model`` called through ``forward_fn(model, inputs)`` (a model not called as ``model(*inputs)``)."""

    def __init__(self, model: nn.Module, forward_fn: ForwardFn) -> None:
        super().__init__()
        self.model, self.forward_fn = model, forward_fn

    def forward(self, inputs: Any) -> Any:
        """``forward_fn(model, inputs)``."""
        return self.forward_fn(self.model, inputs)


def call(model: nn.Module, example_inputs: Inputs, forward_fn: ForwardFn | None = None) -> Any:
    """Run ``model`` on ``example_inputs``: ``forward_fn(model, inputs)`` if given, else ``model(*inputs)``."""
    if forward_fn is not None:
        return forward_fn(model, example_inputs)
    return model(*example_inputs) if isinstance(example_inputs, tuple) else model(example_inputs)


def count_ops(model: nn.Module, example_inputs: Any) -> tuple[float, float, dict[nn.Module, Any]]:
    """torch-pruning's ``count_ops_and_params(model, example_inputs, layer_wise=True)``: MACs, params and the MACs
    of each module of ``model``. torch-pruning's own function deep-copies the model first (a copy cost more than
    the forward it counts); this one hooks ``model`` itself and takes every hook and attribute off again."""
    from torch_pruning.utils import op_counter

    own = set(vars(model))  # the counter binds its methods and a batch counter to the top module
    flops_model = op_counter.add_flops_counting_methods(model)
    try:
        flops_model.eval()
        flops_model.start_flops_count(ost=sys.stdout, verbose=False, ignore_list=[])
        with torch.no_grad():
            if isinstance(example_inputs, tuple | list):
                flops_model(*example_inputs)
            else:
                flops_model(example_inputs)
        macs, params, per_layer, _ = flops_model.compute_average_flops_cost()
    finally:
        flops_model.stop_flops_count()
        op_counter.CUSTOM_MODULES_MAPPING = {}
        for key in set(vars(model)) - own:
            delattr(model, key)
    return macs, params, {m: per_layer.get(m) for m in model.modules()}


def measure(model: nn.Module, example_inputs: Inputs, forward_fn: ForwardFn | None = None) -> ModelStats:
    """Count ``model``'s parameters, MACs (for ``example_inputs``, run through ``forward_fn`` if given) and bytes."""
    was_training = model.training
    model.eval()
    try:
        counted: nn.Module = model if forward_fn is None else Called(model, forward_fn)
        with torch.no_grad():  # no autograd graph left behind in modules that cache tensors
            macs, params, _ = count_ops(counted, (example_inputs,) if forward_fn else example_inputs)
    finally:
        model.train(was_training)
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return ModelStats(params=int(params), macs=int(macs), bytes=state_bytes(model), nonzero_params=nonzero)


def _width(mod: nn.Module) -> tuple[int, int] | None:
    for a, b in (("in_channels", "out_channels"), ("in_features", "out_features")):
        if hasattr(mod, a) and hasattr(mod, b):
            return int(getattr(mod, a)), int(getattr(mod, b))
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        return int(mod.num_features), int(mod.num_features)
    return None


def layer_report(before: nn.Module, after: nn.Module) -> list[dict[str, Any]]:
    """One row per conv/linear/batch-norm layer: channels, params and sparsity before → after."""
    after_mods = dict(after.named_modules())
    rows: list[dict[str, Any]] = []
    for name, mod in before.named_modules():
        w0 = _width(mod)
        if w0 is None or name not in after_mods:
            continue
        new = after_mods[name]
        w1 = _width(new) or w0
        p0 = sum(p.numel() for p in mod.parameters(recurse=False))
        p1 = sum(p.numel() for p in new.parameters(recurse=False))
        nz = sum(int(torch.count_nonzero(p)) for p in new.parameters(recurse=False))
        rows.append({
            "layer": name,
            "type": type(mod).__name__,
            "in_before": w0[0], "in_after": w1[0],
            "out_before": w0[1], "out_after": w1[1],
            "params_before": p0, "params_after": p1,
            "sparsity_after": 0.0 if p1 == 0 else round(1.0 - nz / p1, 6),
        })
    return rows
