"""One call for PTQ (:func:`quantize`), two for QAT (:func:`prepare_qat` … your loop … :func:`convert`).

The float model is ``torch.export``-ed with a dynamic batch dimension, annotated by
:class:`~edgeslim.plugin.quantization.quantizer.EdgeslimQuantizer` and run through torchao's
PT2E ``prepare_pt2e`` / ``prepare_qat_pt2e`` / ``convert_pt2e``. The result is a converted
``torch.fx.GraphModule`` with standard quantize/dequantize ops (ONNX-exportable with
``dynamo=True``). Grid schemes (log2, codebook, pwl) have their snapped weights baked into the
parameters before the stock convert, and every converted weight is checked against the
fake-quant output — a mismatch raises :class:`ConversionError`, never returns a wrong model.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.export import Dim, export
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e

from edgeslim.models import copy_arch
from edgeslim.plugin.quantization.bias_correction import InputMeans, correct_bias, output_shift
from edgeslim.plugin.quantization.calibration import CALIBRATORS, calibration_device, name_observer
from edgeslim.plugin.quantization.coded import CodedWeight
from edgeslim.plugin.quantization.config import Mode, QuantConfig
from edgeslim.plugin.quantization.errors import CalibrationError, ConversionError, QuantizationError
from edgeslim.plugin.quantization.fake_quant import GridFakeQuantizePerChannel
from edgeslim.plugin.quantization.info import QuantInfo, remember, require_info
from edgeslim.plugin.quantization.log_act import insert_log2_snaps
from edgeslim.plugin.quantization.modes import fold_stat_free_batch_norms, to_eval, to_train
from edgeslim.plugin.quantization.quantizer import WEIGHTED, EdgeslimQuantizer, module_name
from edgeslim.plugin.quantization.report import LayerReport, QuantReport, sqnr_db
from edgeslim.plugin.quantization.schemes.base import nearest_level
from edgeslim.train import device_of

Batch = torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]


@dataclass
class QuantResult:
    """What :func:`quantize` / :func:`convert` return.

    Attributes:
        model: The converted PT2E ``GraphModule`` (quantize/dequantize ops, dynamic batch).
        config: The config used.
        report: Per-layer SQNR, bits and bytes.
        weight_bytes: Bytes of all weights as deployed (codes at their bit-width + scales/codebooks).
        coded_weights: For grid schemes (log2, codebook, pwl): integer codes + codebook per layer,
            keyed by the fp32 model's module name.
        left_float: Ops left in float because the quantizer does not handle them.
        info: What saving and reloading the model needs (mode, example shape, float ancestor's
            structure and sha256 ...); ``edgeslim.save(result, path)`` writes it to the file.
    """

    model: GraphModule
    config: QuantConfig
    report: QuantReport
    weight_bytes: int
    coded_weights: dict[str, CodedWeight] = field(default_factory=dict)
    left_float: list[str] = field(default_factory=list)
    info: QuantInfo | None = None


def enable_train_eval(gm: GraphModule) -> GraphModule:
    """Make ``gm.train()`` / ``gm.eval()`` work on an exported graph (dropout/BN switch) and return ``gm``.

    BatchNorm frozen by :func:`~edgeslim.plugin.quantization.qat.freeze_bn` stays frozen through
    ``train()`` (dropout still switches): the usual ``model.eval()`` / ``model.train()`` around a
    validation pass must not restart the batch statistics late in QAT.
    """
    from edgeslim.plugin.quantization.qat import bn_frozen, freeze_bn

    def _train(self: GraphModule, mode: bool = True) -> GraphModule:
        (to_train if mode else to_eval)(self)
        if mode and bn_frozen(self):
            freeze_bn(self)
        self.training = mode
        return self

    def _eval(self: GraphModule) -> GraphModule:
        return _train(self, False)

    gm.train = types.MethodType(_train, gm)  # type: ignore[method-assign]
    gm.eval = types.MethodType(_eval, gm)  # type: ignore[method-assign]
    return gm


def _as_tuple(example_inputs: Batch) -> tuple[torch.Tensor, ...]:
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def export_model(model: nn.Module, example_inputs: Batch) -> GraphModule:
    """``torch.export`` ``model`` in eval mode with a dynamic batch dimension; returns the GraphModule."""
    args = _as_tuple(example_inputs)
    args = tuple(a.expand(2, *a.shape[1:]).clone() if a.shape[0] == 1 else a for a in args)
    dyn = tuple({0: Dim("b")} for _ in args)
    try:
        return export(model.eval(), args, dynamic_shapes=dyn).module()
    except Exception as exc:
        raise QuantizationError(
            f"torch.export could not trace {type(model).__name__} ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); "
            "make its forward traceable (no data-dependent Python control flow) before quantizing"
        ) from exc


def prepare(model: nn.Module, example_inputs: Batch, config: QuantConfig, *, mode: Mode = Mode.PTQ) -> GraphModule:
    """Export and prepare ``model`` (observers for PTQ, fake-quant for QAT); ``model`` is not modified."""
    from edgeslim.io import state_sha256
    from edgeslim.plugin.pruning.io import PrunedFormat

    float_payload = PrunedFormat().dump(model)
    graph = export_model(copy.deepcopy(model), example_inputs)  # baking must never touch the user's model
    quantizer = EdgeslimQuantizer(config, qat=mode is Mode.QAT)
    prepared = prepare_qat_pt2e(graph, quantizer) if mode is Mode.QAT else prepare_pt2e(graph, quantizer)
    observers: dict[str, str] = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module" and node.args and isinstance(node.args[0], Node):
            src = node.args[0]
            feeds = sorted({module_name(u) for u in node.users if module_name(u)})
            where = f" feeding {', '.join(feeds)}" if feeds else ""
            observers[str(node.target)] = f"{module_name(src) or 'top level'} (node {src.name}){where}"
            name_observer(prepared.get_submodule(str(node.target)), observers[str(node.target)])
    x0 = _as_tuple(example_inputs)[0]
    remember(prepared, QuantInfo(
        config=config, mode=mode, example_shape=(2, *x0.shape[1:]), float_structure=float_payload,
        float_sha256=state_sha256(float_payload["state_dict"]), left_float=tuple(quantizer.left_float),
        layers={k: v is not None for k, v in quantizer.layers.items()}, observers=observers,
    ))
    copy_arch(model, prepared)
    return prepared


def _inputs_of(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, list | tuple) else batch


@torch.no_grad()
def calibrate(prepared: GraphModule, loader: Iterable[Any], *, max_batches: int | None = None,
              device: str | torch.device | None = None) -> int:
    """Run calibration batches through a prepared model; returns the number of images seen.

    Args:
        prepared: From :func:`prepare`.
        loader: Calibration batches.
        max_batches: Stop after this many batches.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a ``torch.device`` (None: where ``prepared`` is).
            The graph runs there and is moved back afterwards; one that creates tensors on a fixed
            device stays where it is (a warning names the node; :func:`~.calibration.calibration_device`).

    Raises:
        CalibrationError: The loader yields nothing, or an activation is NaN/inf (the layer is named).
        ConfigError: An unknown device, or a CUDA device this machine does not have.
    """
    home, dev = device_of(prepared), calibration_device(prepared, device)
    seen = 0
    prepared.to(dev)
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x = _inputs_of(batch)
            if not bool(torch.isfinite(x).all()):
                raise CalibrationError(f"calibration batch {i} contains NaN/inf in the model input: clean the calibration data")
            prepared(x.to(dev))
            seen += int(x.shape[0])
    finally:
        prepared.to(home)
    if seen == 0:
        raise CalibrationError("the calibration set is empty: pass a loader that yields at least one batch")
    return seen


def quantize(
    model: nn.Module,
    example_inputs: Batch,
    config: QuantConfig | str,
    calibration: Iterable[Any] | None = None,
    *,
    max_batches: int | None = None,
    device: str | torch.device | None = None,
) -> QuantResult:
    """Post-training quantization in one call.

    Args:
        model: The float model (not modified).
        example_inputs: One input batch (or a tuple of inputs) for ``torch.export``.
        config: A :class:`QuantConfig`, or a spec string such as ``"int8"`` or ``"log2:4"``.
        calibration: A loader of ``(images, labels)`` (or images) batches, e.g.
            :func:`edgeslim.data.calibration_subset`.
        max_batches: Stop calibrating after this many batches.
        device: Where calibration runs (``auto``, ``cpu``, ``cuda``, ``cuda:N``; None: the CPU, where
            the exported graph is); the converted model is on the CPU either way, ready to export.

    Returns:
        A :class:`QuantResult` whose ``.model`` is the converted GraphModule.

    Raises:
        CalibrationError: No calibration data, or NaN/inf met at a named layer.
        UnsupportedOpError: Unknown ops and ``config.strict``.
        ConversionError: A converted weight differs from its fake-quant value.
        ConfigError: An unknown device, or a CUDA device this machine does not have.
    """
    cfg = QuantConfig.from_spec(config) if isinstance(config, str) else config
    if calibration is None:
        raise CalibrationError("PTQ needs calibration data: pass calibration=<loader of training images>")
    prepared = prepare(model, example_inputs, cfg, mode=Mode.PTQ)
    means = InputMeans(prepared) if cfg.bias_correction else None
    try:
        calibrate(prepared, calibration, max_batches=max_batches, device=device)
    finally:
        input_means = means.finish() if means is not None else None
    return convert(prepared, input_means=input_means)


def prepare_qat(model: nn.Module, example_inputs: Batch, config: QuantConfig | str) -> GraphModule:
    """Prepare ``model`` for quantization-aware training; returns a trainable GraphModule in train mode.

    Train it with any optimizer over ``prepared.parameters()``, optionally stepping a
    :class:`~edgeslim.plugin.quantization.qat.QATSchedule`, then call :func:`convert`.
    """
    cfg = QuantConfig.from_spec(config) if isinstance(config, str) else config
    prepared = prepare(model, example_inputs, cfg, mode=Mode.QAT)
    to_train(prepared)
    enable_train_eval(prepared)
    prepared.training = True
    return prepared


def _weight_source(prepared: GraphModule, node: Node) -> tuple[nn.Module, str]:
    """The module and attribute name of the parameter feeding a weight fake-quant/observer node."""
    cur: Any = node.args[0]
    while isinstance(cur, Node) and cur.op != "get_attr":
        cur = next((a for a in cur.args if isinstance(a, Node)), None)
    if not isinstance(cur, Node):
        raise ConversionError(f"cannot find the parameter behind weight fake-quant {node.name}")
    owner, _, leaf = str(cur.target).rpartition(".")
    return (prepared.get_submodule(owner) if owner else prepared), leaf


def _weight_observers(prepared: GraphModule) -> dict[str, tuple[Node, nn.Module]]:
    """``{layer name: (observer node, observer module)}`` for every observed conv/linear weight."""
    out: dict[str, tuple[Node, nn.Module]] = {}
    for node in prepared.graph.nodes:
        if node.op != "call_module":
            continue
        for user in node.users:
            if user.op == "call_function" and user.target in WEIGHTED and len(user.args) > 1 and user.args[1] is node:
                out[module_name(user)] = (node, prepared.get_submodule(str(node.target)))
    return out


@torch.no_grad()
def _capture_inputs(prepared: GraphModule, mods: dict[str, tuple[Node, nn.Module]], shape: list[int]) -> dict[str, torch.Tensor]:
    got: dict[str, torch.Tensor] = {}
    hooks = []
    for name, (_, mod) in mods.items():
        hooks.append(mod.register_forward_pre_hook(lambda m, a, n=name: got.__setitem__(n, a[0].detach().clone())))
    try:
        prepared(torch.zeros(shape))
    finally:
        for h in hooks:
            h.remove()
    return got


def _bake(prepared: GraphModule, name: str, node: Node, fq: GridFakeQuantizePerChannel, x: torch.Tensor) -> torch.Tensor:
    """Write ``fq.snap(x)`` back into the parameter behind ``x`` (undoing any per-channel BN scale)."""
    owner, leaf = _weight_source(prepared, node)
    param = getattr(owner, leaf)
    snapped = fq.snap(x)
    w = param.detach()
    if w.shape != x.shape:
        raise ConversionError(f"layer {name}: weight fake-quant input {tuple(x.shape)} is not its parameter {tuple(w.shape)}")
    dims = tuple(range(1, w.dim()))
    den = (w * w).sum(dim=dims, keepdim=True)
    factor = torch.where(den > 0, (x * w).sum(dim=dims, keepdim=True) / den.clamp_min(1e-30), torch.ones_like(den))
    factor = torch.where(factor == 0, torch.ones_like(factor), factor)
    param.data.copy_(snapped / factor)
    return snapped


def _dequantized_weights(converted: GraphModule) -> dict[str, torch.Tensor]:
    """``{layer name: dequantized weight}`` read from the converted graph's weight dequantize ops."""
    out: dict[str, torch.Tensor] = {}
    for node in converted.graph.nodes:
        if node.op == "call_function" and node.target in WEIGHTED and len(node.args) > 1:
            dq = node.args[1]
            if isinstance(dq, Node) and dq.op == "call_function" and "dequantize" in str(dq.target):
                args = [_attr(converted, a) if isinstance(a, Node) else a for a in dq.args]
                out[module_name(node)] = dq.target(*args, **dq.kwargs)  # type: ignore[operator]
    return out


def _attr(gm: GraphModule, node: Node) -> Any:
    if node.op != "get_attr":
        raise ConversionError(f"unexpected non-constant {node.name} in a weight dequantize op")
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj


def convert(prepared: GraphModule, *, input_means: dict[str, torch.Tensor] | None = None) -> QuantResult:
    """Convert a calibrated (PTQ) or trained (QAT) prepared model; see the module docstring.

    The prepared model is consumed (converted in place by torchao).

    Args:
        prepared: From :func:`prepare_qat` (after training) or :func:`prepare` (after calibration).
        input_means: Per-layer mean input channels recorded during calibration; grid-scheme
            layers then get their bias corrected for the mean shift their weight error causes.

    Raises:
        ConversionError: A converted weight differs from its fake-quant output.
    """
    info = require_info(prepared, "convert()")
    if info.converted:
        raise QuantizationError("convert() got a graph that is already converted: pass the prepared graph (once)")
    to_eval(prepared)
    fold_stat_free_batch_norms(prepared)
    obs = _weight_observers(prepared)
    inputs = _capture_inputs(prepared, obs, list(info.example_shape))
    expected: dict[str, torch.Tensor] = {}
    books: dict[str, tuple[torch.Tensor, int]] = {}
    for name, (node, mod) in obs.items():
        if isinstance(mod, GridFakeQuantizePerChannel):
            mod.disable_observer()
            expected[name] = _bake(prepared, name, node, mod, inputs[name])
            books[name] = (mod.codebook.clone(), mod.bits)
            if input_means is not None and name in input_means:
                layer_node = next(u for u in node.users if u.target in WEIGHTED)
                correct_bias(prepared, layer_node, output_shift(expected[name] - inputs[name], input_means[name]))
    insert_log2_snaps(prepared)
    converted = convert_pt2e(prepared)
    deq = _dequantized_weights(converted)
    coded: dict[str, CodedWeight] = {}
    for name, want in expected.items():
        got = deq.get(name)
        if got is None or got.shape != want.shape or not torch.allclose(got, want, rtol=0, atol=float(want.abs().max()) * 1e-6):
            diff = "missing" if got is None else f"max |diff| {float((got - want).abs().max()):.3g}"
            raise ConversionError(f"layer {name}: converted weight != fake-quant output ({diff}); please report this model")
        book, bits = books[name]
        gc = got.reshape(got.shape[0], -1) if book.shape[0] > 1 else got.reshape(1, -1)
        codes = nearest_level(gc, book).reshape(got.shape)
        cw = CodedWeight(codes=codes.to(torch.uint8 if bits <= 8 else torch.int32),
                         codebook=book if book.shape[0] > 1 else book[0], bits=bits, axis=0)
        if not torch.equal(cw.decode(), got):
            raise ConversionError(f"layer {name}: codes + codebook do not decode to the converted weight")
        coded[name] = cw
    cfg = info.config
    report = build_report(cfg, info, inputs, deq, coded)
    enable_train_eval(converted)
    converted.training = False
    done = info.as_converted(observers={}, report=report.to_dict())
    remember(converted, done)
    copy_arch(prepared, converted)
    return QuantResult(converted, cfg, report, report.weight_bytes, coded, list(info.left_float), done)


def build_report(cfg: QuantConfig, info: QuantInfo, floats: dict[str, torch.Tensor], deq: dict[str, torch.Tensor], coded: dict[str, CodedWeight]) -> QuantReport:
    """Per-layer SQNR/bits/bytes of the converted model (float layers counted at 4 bytes a weight)."""
    layers: list[LayerReport] = []
    state = info.float_structure["state_dict"]
    for name in info.layers:
        lc = cfg.for_layer(name)
        w = state.get(f"{name}.weight")
        numel = int(w.numel()) if w is not None else 0
        if name in deq and lc.weight is not None:
            q = deq[name]
            ref = floats.get(name, q)
            channels = int(q.shape[0])
            nbytes = coded[name].nbytes + channels * 4 if name in coded else (numel * lc.weight.bits + 7) // 8 + channels * 4
            layers.append(LayerReport(name, lc.weight.scheme, lc.weight.bits, lc.activation.bits if lc.activation else 32,
                                      sqnr_db(ref, q), numel, nbytes))
        else:
            layers.append(LayerReport(name, "float", 32, lc.activation.bits if lc.activation else 32, float("inf"), numel, numel * 4))
    return QuantReport(cfg.name, layers)


__all__ = ["CALIBRATORS", "QuantResult", "calibrate", "convert", "export_model", "prepare", "prepare_qat", "quantize"]
