"""TFLite interpreters (ai-edge-litert, preferred; legacy tflite-runtime): THE runner of ``.tflite`` files.

This file depends on the standard library, numpy and the interpreter module only (no torch, no
edgeslim): the exporter's verification (:class:`edgeslim.exporters.tflite.LiteRTRunner`) subclasses
:class:`LiteRtRunner`, and the uploadable bench agent contains this file verbatim
(:func:`edgeslim.device_bench.agent_build.build_agent`).

The runner hides what differs from the PyTorch model: an NHWC input (a 4-D NCHW batch is
transposed when the model wants NHWC), the fixed batch size (any batch is split into chunks,
the last one padded) and quantized input/output tensors (quantized with the input's scale and
zero point, outputs dequantized).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

try:
    import numpy as np
except ImportError:  # on a board without numpy the agent reports it (its probe still runs)
    np = None  # type: ignore[assignment]


def guess_layout(shape: tuple[int, ...] | list[int]) -> str:
    """``"nhwc"`` if a 4-D shape has 1, 3 or 4 channels last and not first, else ``"nchw"``."""
    if len(shape) == 4 and shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return "nhwc"
    return "nchw"


def _quant_params(detail: Mapping[str, Any]) -> tuple[float, int] | None:
    """``(scale, zero point)`` of a quantized tensor, None for a float one."""
    scale, zero = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zero)) if scale else None


class LiteRtRunner:
    """A TFLite file in Google's LiteRT interpreter (XNNPACK on by default).

    Args:
        path: The ``.tflite`` file (or ``content``: its bytes).
        content: The flatbuffer bytes, instead of ``path``.
        layout: The model's image input layout, ``"nchw"`` or ``"nhwc"`` (default: guessed from its shape).
        threads: Interpreter threads (None or 0: the interpreter's default).
        xnnpack: Use the default delegates (XNNPACK); off = the built-in kernels only.
        preserve_all_tensors: Keep intermediate tensors readable (for per-layer reports).

    Attributes:
        interpreter: The interpreter (tensors allocated).
        inputs: Input tensor details. outputs: Output tensor details.
        batch: The first input's (fixed) batch size.
        layout: ``"nchw"`` or ``"nhwc"``.
        metadata: Model metadata the runner applies (none for TFLite).
        settings: The interpreter settings applied (recorded in bench results).
    """

    name = "ai-edge-litert"
    module = "ai_edge_litert"
    pip_name = "ai-edge-litert"
    suffixes = (".tflite",)
    wheels = ("numpy", "ai-edge-litert")

    def __init__(self, path: str | os.PathLike[str] | None = None, *, content: bytes | None = None,
                 layout: str | None = None, threads: int | None = None, xnnpack: bool = True,
                 preserve_all_tensors: bool = False) -> None:
        interp_mod = importlib.import_module(self.module + ".interpreter")
        kwargs: dict[str, Any] = {"num_threads": threads} if threads else {}
        if not xnnpack:
            kwargs["experimental_op_resolver_type"] = interp_mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        if preserve_all_tensors:
            kwargs["experimental_preserve_all_tensors"] = True
        if (path is None) == (content is None):
            raise ValueError("give a .tflite path or its content (exactly one)")
        src: dict[str, Any] = {"model_content": content} if path is None else {"model_path": os.fspath(path)}
        self.interpreter = interp_mod.Interpreter(**src, **kwargs)
        self.interpreter.allocate_tensors()
        self.inputs: list[dict[str, Any]] = self.interpreter.get_input_details()
        self.outputs: list[dict[str, Any]] = self.interpreter.get_output_details()
        self.shape = tuple(int(d) for d in self.inputs[0]["shape"])
        self.batch = self.shape[0] if self.shape else 1
        self.layout = str(layout or guess_layout(self.shape)).lower()
        self.metadata: dict[str, str] = {}
        self.settings: dict[str, Any] = {"threads": threads or 0, "xnnpack": xnnpack, "layout": self.layout}

    def input_specs(self) -> list[tuple[str, list[int], str]]:
        """``(name, shape, dtype the caller feeds)`` per input: quantized inputs are fed float32."""
        return [(str(d["name"]), [int(s) for s in d["shape"]], "float32" if _quant_params(d) else np.dtype(d["dtype"]).name)
                for d in self.inputs]

    def run(self, feeds: Mapping[str, Any]) -> list[Any]:
        """Run once on inputs of the model's exact shapes; quantized tensors are (de)quantized."""
        for d in self.inputs:
            self.interpreter.set_tensor(d["index"], self._quantize(d, np.asarray(feeds[d["name"]])))
        self.interpreter.invoke()
        outs = []
        for d in self.outputs:
            y = self.interpreter.get_tensor(d["index"])
            q = _quant_params(d)
            outs.append((y.astype(np.float32) - q[1]) * np.float32(q[0]) if q else y)
        return outs

    @staticmethod
    def _quantize(detail: Mapping[str, Any], x: Any) -> Any:
        q = _quant_params(detail)
        if q is None or np.issubdtype(x.dtype, np.integer):
            return x.astype(detail["dtype"])
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / q[0]) + q[1], info.min, info.max).astype(detail["dtype"])

    def adapt(self, x: Any) -> Any:
        """A batch for the first input: float32, NCHW transposed to NHWC if the model wants NHWC."""
        x = np.asarray(x, np.float32)
        if self.layout == "nhwc" and x.ndim == 4 and tuple(x.shape[1:]) != self.shape[1:]:
            x = x.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x)

    def predict(self, x: Any) -> Any:
        """The first output (float32) for a batch ``x`` of any size (NCHW, or already the model's layout)."""
        xin = self.adapt(x)
        name = self.inputs[0]["name"]
        outs = []
        for i in range(0, len(xin), self.batch):
            chunk = xin[i : i + self.batch]
            pad = self.batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            outs.append(np.asarray(self.run({name: chunk})[0])[: self.batch - pad])
        return np.concatenate(outs).astype(np.float32)


class TfliteRuntimeRunner(LiteRtRunner):
    """The legacy tflite-runtime interpreter (same interface; needs numpy<2)."""

    name = "tflite-runtime"
    module = "tflite_runtime"
    pip_name = "tflite-runtime"
    wheels = ("numpy<2", "tflite-runtime")
