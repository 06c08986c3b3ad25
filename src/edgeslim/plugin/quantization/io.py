"""The ``quantized`` saved-model format (``edgeslim.save`` / ``edgeslim.load``, ``weights_only=True``).

A quantized file holds the quantized model, not the float one (format 2):

- ``float``: the float model's *structure* — architecture name, per-module manifest, the shape
  and dtype of every state_dict entry, pruning masks — but no float weights (unless saved with
  ``keep_float=True``, CLI ``--keep-float``);
- ``constants``: every constant of the converted graph (int8 weights, scales, zero points,
  biases) by attribute name, each stored by :mod:`~edgeslim.plugin.quantization.packing`
  (4-bit weight codes packed two per byte with a small lookup table, constant tensors as one
  value) — lossless;
- ``qparams``: the literal scale/zero point of each per-tensor quantize/dequantize op;
- the :class:`QuantConfig`, the mode (ptq/qat), the example input shape, the report, the
  float ancestor's sha256.

Loading rebuilds the graph by running export → prepare → convert on a stand-in float model of
the recorded shapes (seeded random weights: every value the converted graph computes with is
then overwritten), checks that it has exactly the saved constants and literal qparams, and
loads them — outputs are bit-identical to the model that was saved. Format-1 files (which
embedded the float state_dict) still load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

from edgeslim.errors import ModelLoadError
from edgeslim.io import FORMATS, state_sha256
from edgeslim.models import copy_arch
from edgeslim.plugin.quantization.api import QuantResult
from edgeslim.plugin.quantization.info import QuantInfo, info_of, remember, require_info
from edgeslim.plugin.quantization.packing import pack, packed_bytes, unpack


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


def _structure(float_payload: dict[str, Any], keep_float: bool) -> dict[str, Any]:
    """The float payload without its weights (shapes and dtypes instead), unless ``keep_float``."""
    state: dict[str, torch.Tensor] = float_payload["state_dict"]
    out = {k: v for k, v in float_payload.items() if k != "state_dict"}
    out["shapes"] = {k: [list(v.shape), str(v.dtype)] for k, v in state.items()}
    if keep_float:
        out["state_dict"] = state
    return out


def _stand_in_state(shapes: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
    """Seeded random tensors of the recorded shapes (BN variances positive, counters zero)."""
    from edgeslim.plugin.quantization.packing import _dtype

    gen = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    for key, (shape, dtype_name) in shapes.items():
        dtype = _dtype(str(dtype_name))
        if not dtype.is_floating_point:
            out[key] = torch.zeros(shape, dtype=dtype)
        elif key.endswith("running_var"):
            out[key] = torch.ones(shape, dtype=dtype)
        else:
            out[key] = (torch.randn(shape, generator=gen) * 0.05).to(dtype)
    return out


class QuantizedFormat:
    """See the module docstring."""

    def claims(self, obj: Any) -> bool:
        """A ``QuantResult``, or a graph edgeslim prepared/converted/loaded, is saved as ``quantized``."""
        return isinstance(obj, QuantResult) or info_of(obj) is not None

    def dump(self, model: Any, *, keep_float: bool = False) -> dict[str, Any]:
        """Payload for :func:`edgeslim.io.save` (``model``: a ``QuantResult``, or its converted graph)."""
        result = model if isinstance(model, QuantResult) else None
        gm = result.model if result is not None else model
        info = (result.info if result is not None else None) or info_of(gm)
        if not isinstance(gm, GraphModule) or info is None:
            raise ModelLoadError(
                "only models returned by edgeslim.quantize()/convert()/load() can be saved as 'quantized': "
                "pass the QuantResult itself (edgeslim.save(result, path))"
            )
        if not info.converted:
            raise ModelLoadError("this graph is prepared, not converted: calibrate or train it, call convert(), "
                                 "and save the QuantResult it returns")
        fs = info.float_structure
        constants = {name: pack(t) for name, t in graph_constants(gm).items()}
        report = result.report.to_dict() if result is not None else info.report
        return {
            "float": _structure(fs, keep_float) if "state_dict" in fs else fs,
            "config": info.config.to_dict(), "mode": info.mode.value, "example_shape": list(info.example_shape),
            "constants": constants, "qparams": literal_qparams(gm), "left_float": list(info.left_float),
            "float_sha256": info.float_sha256 or state_sha256(fs["state_dict"]),
            "report": report, "constant_bytes": sum(packed_bytes(e) for e in constants.values()),
        }

    def restore(self, payload: dict[str, Any], base: nn.Module | None) -> nn.Module:
        """Rebuild the converted graph and load the saved constants."""
        from edgeslim.plugin.pruning.io import PrunedFormat
        from edgeslim.plugin.quantization.api import enable_train_eval, prepare
        from edgeslim.plugin.quantization.config import Mode, QuantConfig
        from edgeslim.plugin.quantization.log_act import insert_log2_snaps

        structure = dict(payload["float"])
        if "state_dict" not in structure:
            structure["state_dict"] = _stand_in_state(structure["shapes"])
        float_model = PrunedFormat().restore(structure, base)
        cfg = QuantConfig.from_dict(payload["config"])
        mode = Mode(payload["mode"])
        x = torch.zeros(payload["example_shape"])
        prepared = prepare(float_model, x, cfg, mode=mode)
        with torch.no_grad():
            prepared(x)
        insert_log2_snaps(prepared)  # log2 activations: the snap ops (their constants are restored below)
        converted = convert_pt2e(prepared)
        try:
            saved = {k: (unpack(v) if isinstance(v, dict) else v) for k, v in payload["constants"].items()}
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"a packed constant of this quantized file is corrupt ({exc}): re-save the model") from exc
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
            if have[target].shape != value.shape or have[target].dtype != value.dtype:
                raise ModelLoadError(f"saved constant {target} is {tuple(value.shape)} {value.dtype}, "
                                     f"the rebuilt graph has {tuple(have[target].shape)} {have[target].dtype}")
            _set_constant(converted, target, value)
        enable_train_eval(converted)
        converted.training = False
        info: QuantInfo = require_info(prepared, "loading a quantized file").as_converted(
            float_structure=payload["float"], left_float=tuple(payload.get("left_float", [])),
            float_sha256=payload.get("float_sha256"), report=payload.get("report"), observers={},
        )
        remember(converted, info)
        copy_arch(float_model, converted)
        return converted


FORMATS.register("quantized")(QuantizedFormat())

__all__ = ["QuantizedFormat", "graph_constants", "literal_qparams"]
