"""Per-layer cross-runtime error report: which layer breaks a quantized export?

For named layers (default: every block of the network), the intermediate activation is read
out of each artefact — ONNX (the tensor is added as a graph output; in a QDQ graph the
dequantized value that the next layer really sees) and TFLite (interpreter with all tensors
preserved, reference kernels, int8 tensors dequantized with their scale/zero point, NHWC
transposed) — and compared with the PyTorch fp32 activation of the same module.

ONNX tensors are matched to modules through the ``pkg.torch.onnx.name_scopes`` metadata of the
dynamo exporter; TFLite tensors through litert-torch's ``Class_attr/...`` tensor names.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeslim.registry import Registry

#: suffix -> function(path, layers, x) -> {layer: NCHW activation or None}
ACTIVATION_READERS: Registry[Any] = Registry("intermediate-activation reader")


@dataclass(frozen=True)
class LayerError:
    """Error of one layer's activation against PyTorch fp32."""

    rel_error: float
    cosine: float
    max_abs: float


@dataclass
class LayerwiseReport:
    """Per-layer errors of several artefacts. ``errors[artefact][layer]`` is None when not found."""

    layers: list[str]
    errors: dict[str, dict[str, LayerError | None]] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per layer: ``{"layer": name, artefact: {rel_error, cosine, max_abs} | None, ...}``."""
        out = []
        for layer in self.layers:
            row: dict[str, Any] = {"layer": layer}
            for label, errs in self.errors.items():
                e = errs.get(layer)
                row[label] = None if e is None else {"rel_error": e.rel_error, "cosine": e.cosine, "max_abs": e.max_abs}
            out.append(row)
        return out

    def worst(self, label: str) -> str | None:
        """The layer where ``label``'s relative error jumps the most from the previous layer."""
        errs = [(layer, e.rel_error) for layer, e in self.errors[label].items() if e is not None]
        if not errs:
            return None
        jumps = [(errs[0][1], errs[0][0])] + [(b[1] - a[1], b[0]) for a, b in itertools.pairwise(errs)]
        return max(jumps)[1]


def default_layers(model: nn.Module) -> list[str]:
    """Every child of a top-level ``nn.Sequential`` (ResNet blocks, MobileNet features), then the last Linear."""
    names = []
    for name, mod in model.named_children():
        if isinstance(mod, nn.Sequential):
            names += [f"{name}.{child}" for child, _ in mod.named_children()]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names + linears[-1:]


@torch.inference_mode()
def torch_activations(model: nn.Module, layers: list[str], x: torch.Tensor) -> dict[str, np.ndarray]:
    """Outputs of the named modules for input ``x`` (forward hooks)."""
    acts: dict[str, np.ndarray] = {}
    hooks = []
    mods = dict(model.named_modules())
    for name in layers:
        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            acts[name] = (out[0] if isinstance(out, tuple) else out).detach().float().numpy()

        hooks.append(mods[name].register_forward_hook(hook))
    try:
        model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return acts


def _in_scope(scope: str, layer: str) -> bool:
    return scope == layer or scope.startswith(layer + ".")


@ACTIVATION_READERS.register("onnx")
def onnx_activations(path: Path, layers: list[str], x: np.ndarray) -> dict[str, np.ndarray | None]:
    """Intermediate activations of an ONNX file (see the module docstring)."""
    import ast

    import onnx

    from edgeslim.exporters.onnx import OrtRunner

    model = onnx.load(str(path))
    g = model.graph
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    chosen: dict[str, str] = {}
    for n in g.node:
        if n.op_type in {"QuantizeLinear", "DequantizeLinear"} or not n.output:
            continue
        meta = {p.key: p.value for p in n.metadata_props}
        try:
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            continue
        for layer in layers:
            if any(_in_scope(s, layer) for s in scopes):
                chosen[layer] = n.output[0]
    for layer, t in list(chosen.items()):  # follow Q -> DQ: the value the next layer sees
        q = [c for c in consumers.get(t, []) if c.op_type == "QuantizeLinear"]
        dq = [c for c in consumers.get(q[0].output[0], []) if c.op_type == "DequantizeLinear"] if q else []
        chosen[layer] = dq[0].output[0] if dq else t
    existing = {o.name for o in g.output}
    for t in dict.fromkeys(chosen.values()):
        if t not in existing:
            g.output.append(onnx.helper.make_empty_tensor_value_info(t))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "probe.onnx"
        onnx.save(model, str(p))
        runner = OrtRunner(p)
        names = [o.name for o in runner.session.get_outputs()]
        outs = dict(zip(names, runner.session.run(None, {runner.input_name: x.astype(np.float32)}), strict=True))
    return {layer: (np.asarray(outs[chosen[layer]]) if layer in chosen else None) for layer in layers}


def _tflite_scope(name: str) -> str:
    """``a.B_layer1/c.D_0/e.Conv2d_conv1;1;;...`` -> ``layer1.0.conv1`` (first fused name only)."""
    first = name.split(";", maxsplit=1)[0]
    attrs = [seg.split("_", 1)[1] for seg in first.split("/")[1:] if "_" in seg]
    return ".".join(attrs)


@ACTIVATION_READERS.register("tflite")
def tflite_activations(path: Path, layers: list[str], x: np.ndarray) -> dict[str, np.ndarray | None]:
    """Intermediate activations of a TFLite file (reference kernels, all tensors preserved)."""
    from edgeslim.exporters.tflite import LiteRTRunner

    runner = LiteRTRunner(path, xnnpack=False, preserve_all_tensors=True)
    interp = runner.interpreter
    details = {d["index"]: d for d in interp.get_tensor_details()}
    chosen: dict[str, int] = {}
    for op in interp._get_ops_details():
        if op["op_name"] in {"QUANTIZE", "DEQUANTIZE"} or not op["outputs"]:
            continue
        out = op["outputs"][0]
        scope = _tflite_scope(str(details[out]["name"]))
        for layer in layers:
            if _in_scope(scope, layer):
                chosen[layer] = out
    per_layer: dict[str, list[np.ndarray]] = {layer: [] for layer in chosen}
    outputs = []
    for i in range(0, len(x), runner.batch):
        outputs.append(runner(x[i : i + runner.batch]))
        for layer, idx in chosen.items():
            t = interp.get_tensor(idx).astype(np.float32)
            scale, zp = details[idx]["quantization"]
            if scale:
                t = (t - zp) * scale
            per_layer[layer].append(t.transpose(0, 3, 1, 2) if t.ndim == 4 and runner.layout.value == "nchw" else t)
    acts = {layer: (np.concatenate(per_layer[layer])[: len(x)] if layer in per_layer else None) for layer in layers}
    if layers and acts[layers[-1]] is None:  # the head writes the graph output, which has no scope name
        acts[layers[-1]] = np.concatenate(outputs)
    return acts


def _error(a: np.ndarray | None, ref: np.ndarray) -> LayerError | None:
    if a is None:
        return None
    if a.shape != ref.shape:
        if a.ndim == 4 and a.transpose(0, 3, 1, 2).shape == ref.shape:  # an NHWC tensor in an NCHW graph
            a = a.transpose(0, 3, 1, 2)
        elif a.size == ref.size:
            a = a.reshape(ref.shape)
        else:
            return None
    d, r = a.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    norm = float(np.linalg.norm(r)) or 1.0
    cos = float(d @ r / ((np.linalg.norm(d) * np.linalg.norm(r)) or 1.0))
    return LayerError(float(np.linalg.norm(d - r) / norm), cos, float(np.abs(d - r).max()))


def layerwise_report(
    model: nn.Module,
    artefacts: Mapping[str, str | Path],
    x: torch.Tensor,
    layers: Iterable[str] | None = None,
) -> LayerwiseReport:
    """Compare the activations of named layers in each artefact with PyTorch fp32.

    Args:
        model: The fp32 PyTorch model the artefacts came from.
        artefacts: ``{label: path}`` of ONNX / TFLite files.
        x: Real NCHW input images (a few dozen are enough).
        layers: Module names (default :func:`default_layers`).

    Returns:
        A :class:`LayerwiseReport` (``rows()`` for a table, :func:`plot_report` for a picture).
    """
    names = list(layers) if layers is not None else default_layers(model)
    ref = torch_activations(model, names, x)
    report = LayerwiseReport(names)
    for label, p in artefacts.items():
        path = Path(p)
        acts = ACTIVATION_READERS.get(path.suffix.lstrip("."))(path, names, x.numpy())
        report.errors[label] = {layer: _error(acts.get(layer), ref[layer]) for layer in names}
    return report


def plot_report(report: LayerwiseReport, png: str | Path, *, title: str = "Per-layer error vs PyTorch fp32") -> Path:
    """Plot the relative error per layer (log scale) of every artefact into ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(report.layers)), 4.2))
    xs = np.arange(len(report.layers))
    for label, errs in report.errors.items():
        ys = [errs[layer].rel_error if errs.get(layer) else np.nan for layer in report.layers]  # type: ignore[union-attr]
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xticks(xs, report.layers, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("‖act − act_fp32‖ / ‖act_fp32‖")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


__all__ = [
    "ACTIVATION_READERS", "LayerError", "LayerwiseReport", "default_layers", "layerwise_report", "plot_report",
    "torch_activations",
]
