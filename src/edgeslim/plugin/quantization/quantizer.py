"""edgeslim's PT2E ``Quantizer``: annotates conv, linear, add, cat, pooling and activations per layer.

Each conv/linear node is looked up in the :class:`~edgeslim.plugin.quantization.config.QuantConfig`
by its module name (from ``nn_module_stack``), so one model can mix schemes and bit-widths or
keep layers in float. A conv's output observer goes after its BatchNorm and clamping
activation (so PT2E folds the BN); ops the quantizer does not know are left in float and
listed (or refused in strict mode).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.fake_quantize import FusedMovingAvgObsFakeQuantize
from torchao.quantization.pt2e.observer import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from torchao.quantization.pt2e.quantizer import (
    QuantizationAnnotation,
    QuantizationSpec,
    QuantizationSpecBase,
    Quantizer,
    SharedQuantizationSpec,
)

from edgeslim.plugin.quantization.config import ActivationSpec, Granularity, LayerConfig, QuantConfig, WeightSpec
from edgeslim.plugin.quantization.errors import UnsupportedOpError
from edgeslim.plugin.quantization.fake_quant import GridFakeQuantizePerChannel
from edgeslim.plugin.quantization.schemes import ACTIVATION_QSPECS, SCHEMES
from edgeslim.spec import WEIGHT_SCHEMES, SchemeKind

aten = torch.ops.aten
WEIGHTED = {aten.conv1d.default, aten.conv2d.default, aten.linear.default}
BATCH_NORM = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
CLAMPS = {aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default}
ACTIVATIONS = CLAMPS | {
    aten.sigmoid.default, aten.silu.default, aten.silu_.default, aten.hardswish.default,
    aten.hardswish_.default, aten.gelu.default, aten.tanh.default,
}
ADDS = {aten.add.Tensor, aten.add_.Tensor}
POOLS = {aten.adaptive_avg_pool2d.default, aten.mean.dim}
# output scale = input scale: an int8 max pool then runs in int8 in ONNX Runtime, and LiteRT's
# AVERAGE_POOL_2D requires one scale (its converter refuses a pool whose scales differ: DenseNet)
SAME_SCALE_POOLS = {aten.max_pool2d.default, aten.avg_pool2d.default}
#: Slicing and padding: int8 in, int8 out at the input's scale (LiteRT's STRIDED_SLICE requires one scale: Swin's
#: patch merging slices a quantized tensor into a quantized concat).
SAME_SCALE_MOVES = {aten.slice.Tensor, aten.constant_pad_nd.default, aten.pad.default}
#: Ops that only move data around (or vanish in eval): neither quantized nor reported.
PASSTHROUGH = {
    aten.flatten.using_ints, aten.view.default, aten.reshape.default, aten.dropout.default,
    aten.permute.default, aten.transpose.int, aten.contiguous.default, aten.clone.default,
    aten.squeeze.dim, aten.unsqueeze.default, aten.sym_size.int, aten.size.default,
    aten.swapaxes.default, aten.swapdims.default, aten.movedim.int, aten.movedim.intlist, aten.t.default,
    aten.unflatten.int, aten.squeeze.default, aten.squeeze.dims,
}
#: The pass-through ops that return a tensor: one whose input is int8 carries it on at the same scale.
#: Without this the next consumer observes the moved tensor again; a sampled calibrator (mse, percentile,
#: entropy) then picks a slightly different scale from the permuted layout, and LiteRT's converter refuses
#: a TRANSPOSE whose input and output scales differ (MaxViT's grid departition: swapaxes, permute, reshape).
MOVES = PASSTHROUGH - {aten.sym_size.int, aten.size.default}


def module_name(node: Node) -> str:
    """The module path (``"layer1.0.conv1"``) a node was traced from; ``""`` for the top level."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    return str(list(stack.values())[-1][0])


def activation_qspec(spec: ActivationSpec, qat: bool) -> QuantizationSpec:
    """The PT2E spec of an activation, from its registered scheme (affine: int8 up to 8 bits, int16 above)."""
    qspec: QuantizationSpec = ACTIVATION_QSPECS.get(spec.scheme)(spec, qat)
    return qspec


def weight_qspec(spec: WeightSpec, qat: bool) -> QuantizationSpec:
    """The PT2E spec of a conv/linear weight: stock affine observers, or the grid fake-quant."""
    per_channel = spec.granularity is Granularity.PER_CHANNEL
    ctr: Any
    kind = WEIGHT_SCHEMES.get(spec.scheme).kind
    if kind is SchemeKind.FLOAT:
        raise UnsupportedOpError(f"weight scheme {spec.scheme!r} has float levels: the PT2E quantizer lowers only grid "
                                 "and coded schemes; register it with kind=SchemeKind.CODED on an integer grid")
    if kind is SchemeKind.GRID:
        qmax = 2 ** (spec.bits - 1) - 1
        qmin = -qmax if spec.symmetric else -qmax - 1
        dtype = torch.int8 if spec.bits <= 8 else torch.int16
        if per_channel:
            qscheme = torch.per_channel_symmetric if spec.symmetric else torch.per_channel_affine
            obs: Any = MovingAveragePerChannelMinMaxObserver if qat else PerChannelMinMaxObserver
        else:
            qscheme = torch.per_tensor_symmetric if spec.symmetric else torch.per_tensor_affine
            obs = MovingAverageMinMaxObserver if qat else MinMaxObserver
        ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=obs) if qat else obs
        return QuantizationSpec(dtype=dtype, quant_min=qmin, quant_max=qmax, qscheme=qscheme,
                                ch_axis=0 if per_channel else None, observer_or_fake_quant_ctr=ctr)
    probe = SCHEMES.get(spec.scheme).quantize(torch.linspace(-1, 1, 256).reshape(1, -1), spec.bits, **dict(spec.options))[1]
    dtype = torch.int8 if probe.qmax <= 127 else torch.int16
    ctr = GridFakeQuantizePerChannel.with_args(scheme=spec.scheme, bits=spec.bits, per_channel=per_channel, options=spec.options)
    return QuantizationSpec(dtype=dtype, quant_min=-probe.qmax, quant_max=probe.qmax,
                            qscheme=torch.per_channel_symmetric, ch_axis=0, observer_or_fake_quant_ctr=ctr)


def _only_user(node: Node, targets: set[Any]) -> Node | None:
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_function" and users[0].target in targets:
        return users[0]
    return None


def _from_constants(node: Node, depth: int = 0) -> bool:
    """Whether ``node`` is computed from parameters/buffers alone (no model input reaches it): ViT's
    position embedding and class token, Swin's relative position bias. Such an operand is left in float:
    a quantize on a constant is folded by LiteRT's converter into a bare int8 tensor that its
    ``uniform_dequantize`` refuses."""
    if node.op == "get_attr":
        return True
    if node.op != "call_function" or depth > 32:
        return False
    parents = list(node.all_input_nodes)
    return bool(parents) and all(_from_constants(a, depth + 1) for a in parents)


def _mark(node: Node, inputs: dict[Node, QuantizationSpecBase | None] | None = None, output: QuantizationSpecBase | None = None) -> None:
    node.meta["quantization_annotation"] = QuantizationAnnotation(
        input_qspec_map={k: v for k, v in (inputs or {}).items() if v is not None}, output_qspec=output, _annotated=True
    )


def _int8_output(node: Node) -> bool:
    """Whether ``node``'s output is annotated to be quantized (its own spec or one it shares)."""
    ann = node.meta.get("quantization_annotation")
    return bool(ann is not None and ann.output_qspec is not None)


def _identity_pool(node: Node) -> bool:
    """Whether a global/adaptive average pool averages single values (its input is already 1x1: a reshape)."""
    src = node.args[0] if node.args else None
    a = src.meta.get("val") if isinstance(src, Node) else None
    b = node.meta.get("val")
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dim() and b.dim()):
        return False
    try:  # the batch may be symbolic (dynamic): the pool keeps it, the rest must be static
        per_sample = [math.prod(int(d) for d in t.shape[1:]) for t in (a, b)]
    except (TypeError, ValueError, RuntimeError):
        return False
    return str(a.shape[0]) == str(b.shape[0]) and per_sample[0] == per_sample[1]


def _infinite_pad(node: Node) -> bool:
    """Whether ``node`` pads with ±inf or NaN (``constant_pad_nd(x, pad, value)`` / ``pad(x, pad, mode, value)``)."""
    if node.target not in (aten.constant_pad_nd.default, aten.pad.default):
        return False
    at = 2 if node.target == aten.constant_pad_nd.default else 3
    value = node.args[at] if len(node.args) > at else node.kwargs.get("value")
    return isinstance(value, int | float) and not math.isfinite(value)


def _annotated(node: Node) -> bool:
    ann = node.meta.get("quantization_annotation")
    return bool(ann is not None and ann._annotated)


class EdgeslimQuantizer(Quantizer):
    """Annotates a ``torch.export``-ed graph according to a :class:`QuantConfig`.

    Args:
        config: The quantization config.
        qat: Use fake-quant modules that train (``prepare_qat_pt2e``) instead of observers.

    Attributes:
        layers: ``{module name: LayerConfig}`` of every conv/linear met (float ones included).
        left_float: ``"op (module)"`` of every op left in float because it is unknown.
    """

    def __init__(self, config: QuantConfig, *, qat: bool = False) -> None:
        super().__init__()
        self.config, self.qat = config, qat
        self.layers: dict[str, LayerConfig] = {}
        self.left_float: list[str] = []
        self._handlers: dict[Any, Callable[[Node], None]] = {}
        for ops, fn in ((WEIGHTED, self._weighted), (ADDS, self._add), ({aten.cat.default}, self._cat),
                        (POOLS, self._pool), (SAME_SCALE_POOLS | SAME_SCALE_MOVES, self._same_scale), (ACTIVATIONS, self._activation)):
            for op in ops:
                self._handlers[op] = fn

    def _act(self, node: Node) -> QuantizationSpec | None:
        spec = self.config.for_layer(module_name(node)).activation
        return None if spec is None else activation_qspec(spec, self.qat)

    def annotate(self, model: GraphModule) -> GraphModule:
        """Annotate every supported node; record unknown ones (or raise in strict mode)."""
        unknown: list[str] = []
        for node in model.graph.nodes:
            if node.op != "call_function" or _annotated(node):
                continue
            if _from_constants(node):  # parameters/buffers only (Swin V2's position-bias MLP): stays float
                continue
            handler = self._handlers.get(node.target)
            if node.target in MOVES:
                self._move(node)
            elif handler is not None:
                handler(node)
            elif node.target not in PASSTHROUGH and node.target not in BATCH_NORM and "getitem" not in str(node.target):
                unknown.append(f"{node.target} ({module_name(node) or 'top level'})")
        self.left_float = unknown
        if unknown and self.config.strict:
            raise UnsupportedOpError(
                "the quantizer cannot handle these ops (strict mode): " + ", ".join(unknown)
                + "; drop strict to leave them in float, or keep their modules in float with an override"
            )
        if unknown:
            warnings.warn("left in float (unsupported by the quantizer): " + ", ".join(unknown), stacklevel=2)
        return model

    def validate(self, model: GraphModule) -> None:
        """Nothing to validate beyond what :meth:`annotate` checks."""

    def _weighted(self, node: Node) -> None:
        name = module_name(node)
        cfg = self.config.for_layer(name)
        self.layers[name] = cfg
        if cfg.is_float:
            return
        inputs: dict[Node, QuantizationSpecBase | None] = {}
        if cfg.activation is not None:
            inputs[node.args[0]] = activation_qspec(cfg.activation, self.qat)  # type: ignore[index]
        if cfg.weight is not None:
            inputs[node.args[1]] = weight_qspec(cfg.weight, self.qat)  # type: ignore[index]
        end = node
        if (bn := _only_user(end, BATCH_NORM)) is not None:
            _mark(bn)
            end = bn
        if (act := _only_user(end, CLAMPS)) is not None:
            end = act
        feeds_output = any(u.op == "output" for u in end.users)  # model outputs (logits) stay float, as in ORT
        out = None if cfg.activation is None or feeds_output else activation_qspec(cfg.activation, self.qat)
        if end is node:
            _mark(node, inputs, out)
        else:
            _mark(node, inputs)
            _mark(end, output=out)

    def _add(self, node: Node) -> None:
        act = self._act(node)
        if act is None:
            return
        tensors = [a for a in node.args if isinstance(a, Node) and not _from_constants(a)]
        relu = _only_user(node, CLAMPS)
        _mark(node, dict.fromkeys(tensors, act), None if relu else act)
        if relu is not None:
            _mark(relu, output=act)

    def _cat(self, node: Node) -> None:
        act = self._act(node)
        if act is None:
            return
        tensors = [a for a in node.args[0] if isinstance(a, Node) and not _from_constants(a)]  # type: ignore[union-attr]
        _mark(node, dict.fromkeys(tensors, act), act)

    def _pool(self, node: Node) -> None:
        if _identity_pool(node):  # LiteRT lowers it to a RESHAPE, which must keep one scale (RegNetY-128GF at 32x32)
            self._same_scale(node)
            return
        act = self._act(node)
        if act is not None and isinstance(node.args[0], Node):
            _mark(node, {node.args[0]: act}, act)

    def _same_scale(self, node: Node) -> None:
        act = self._act(node)
        if act is not None and isinstance(node.args[0], Node) and not _from_constants(node.args[0]):
            if _infinite_pad(node):
                self._infinite_pad(node, act)
                return
            _mark(node, {node.args[0]: act}, SharedQuantizationSpec((node.args[0], node)))

    def _infinite_pad(self, node: Node, act: QuantizationSpec) -> None:
        """A pad with ±inf (timm's ``MaxPool2dSame``: ``F.pad(x, ..., value=-inf)`` then a max pool).

        Its output cannot be observed (the range would be infinite): the pad reads the int8 input,
        and the max pool after it (if that is its one user) writes at the input's scale, the pair
        running in float between them (ONNX: DequantizeLinear, Pad, MaxPool, QuantizeLinear).
        """
        src = node.args[0]
        assert isinstance(src, Node)
        _mark(node, {src: act})
        if (pool := _only_user(node, SAME_SCALE_POOLS)) is not None:
            _mark(pool, output=SharedQuantizationSpec((src, node)))

    def _move(self, node: Node) -> None:
        src = node.args[0] if node.args else None
        if isinstance(src, Node) and _int8_output(src):
            _mark(node, {src: SharedQuantizationSpec(src)}, SharedQuantizationSpec((src, node)))

    def _activation(self, node: Node) -> None:
        act = self._act(node)
        if act is not None and isinstance(node.args[0], Node):
            _mark(node, {node.args[0]: act}, act)


__all__ = ["EdgeslimQuantizer", "activation_qspec", "module_name", "weight_qspec"]
