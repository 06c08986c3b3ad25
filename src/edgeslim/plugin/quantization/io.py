"""The ``quantized`` saved-model format (``edgeslim.save`` / ``edgeslim.load``, ``weights_only=True``).

Payload: the float model in the ``pruned`` format (architecture + structure manifest + float
weights, so pruned-then-quantized models save too), the :class:`QuantConfig` as a dict, the
mode (ptq/qat), the example input shape, and every constant of the converted graph (int
weights, scales, zero points, biases) by its attribute name, and the literal scale/zero point of
each per-tensor quantize/dequantize op by node name. Loading rebuilds the graph by
re-running export → prepare → convert on the float model with that config, checks that it
has exactly the saved constants, and overwrites them — outputs are bit-identical.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

from edgeslim.errors import ModelLoadError
from edgeslim.io import FORMATS


def graph_constants(gm: GraphModule) -> dict[str, torch.Tensor]:
    """Every tensor a converted graph reads with ``get_attr``, by target name."""
    out: dict[str, torch.Tensor] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            obj: Any = gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            if isinstance(obj, torch.Tensor):
                out[str(node.target)] = obj.detach().clone()
    return out


def literal_qparams(gm: GraphModule) -> dict[str, list[float]]:
    """``{node name: [scale, zero_point]}`` of quantize/dequantize ops whose qparams are literals (per tensor)."""
    out: dict[str, list[float]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and "quantize_per_tensor" in str(node.target) and len(node.args) >= 3:
            scale, zp = node.args[1], node.args[2]
            if isinstance(scale, float | int) and isinstance(zp, float | int):
                out[node.name] = [float(scale), float(zp)]
    return out


def _set_literal_qparams(gm: GraphModule, saved: dict[str, list[float]]) -> None:
    nodes = {n.name: n for n in gm.graph.nodes}
    for name, (scale, zp) in saved.items():
        node = nodes[name]
        node.args = (node.args[0], float(scale), int(zp), *node.args[3:])
    gm.recompile()


def _set_constant(gm: GraphModule, target: str, value: torch.Tensor) -> None:
    owner_name, _, leaf = target.rpartition(".")
    owner = gm.get_submodule(owner_name) if owner_name else gm
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    elif leaf in owner._buffers:
        owner._buffers[leaf] = value
    else:
        setattr(owner, leaf, value)


class QuantizedFormat:
    """See the module docstring."""

    def dump(self, model: nn.Module) -> dict[str, Any]:
        """Payload for :func:`edgeslim.io.save`."""
        meta = getattr(model, "edgeslim_quant", None)
        if not isinstance(model, GraphModule) or meta is None:
            raise ModelLoadError("only models returned by edgeslim.quantize()/convert() can be saved as 'quantized'")
        return {
            "float": meta["float_payload"], "config": meta["config"], "mode": meta["mode"],
            "example_shape": list(meta["example_shape"]), "constants": graph_constants(model),
            "qparams": literal_qparams(model),
            "left_float": list(meta.get("left_float", [])),
        }

    def restore(self, payload: dict[str, Any], base: nn.Module | None) -> nn.Module:
        """Rebuild the converted graph and load the saved constants."""
        from edgeslim.plugin.pruning.io import PrunedFormat
        from edgeslim.plugin.quantization.api import enable_train_eval, prepare
        from edgeslim.plugin.quantization.config import Mode, QuantConfig
        from edgeslim.plugin.quantization.log_act import insert_log2_snaps

        float_model = PrunedFormat().restore(payload["float"], base)
        cfg = QuantConfig.from_dict(payload["config"])
        mode = Mode(payload["mode"])
        x = torch.zeros(payload["example_shape"])
        prepared = prepare(float_model, x, cfg, mode=mode)
        with torch.no_grad():
            prepared(x)
        insert_log2_snaps(prepared)  # log2 activations: the snap ops (their constants are restored below)
        converted = convert_pt2e(prepared)
        saved: dict[str, torch.Tensor] = payload["constants"]
        have = graph_constants(converted)
        if set(have) != set(saved):
            raise ModelLoadError(
                "the rebuilt quantized graph does not match the saved one "
                f"({len(set(have) ^ set(saved))} constants differ): save and load with the same edgeslim/torch versions"
            )
        literals: dict[str, list[float]] = payload.get("qparams", {})
        if set(literal_qparams(converted)) != set(literals):
            raise ModelLoadError("the rebuilt quantized graph has other quantize ops than the saved one: same versions needed")
        _set_literal_qparams(converted, literals)
        for target, value in saved.items():
            if have[target].shape != value.shape:
                raise ModelLoadError(f"saved constant {target} has shape {tuple(value.shape)}, rebuilt {tuple(have[target].shape)}")
            _set_constant(converted, target, value)
        enable_train_eval(converted)
        converted.training = False
        meta: dict[str, Any] = dict(getattr(prepared, "edgeslim_quant", {}))
        meta.update(float_payload=payload["float"], left_float=payload.get("left_float", []))
        converted.edgeslim_kind = "quantized"
        converted.edgeslim_quant = meta
        return converted


FORMATS.register("quantized")(QuantizedFormat())

__all__ = ["QuantizedFormat", "graph_constants"]
