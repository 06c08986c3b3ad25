"""Small models built in the tests: a tiny ONNX from a torch module and a tiny TFLite flatbuffer."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import torch


class TinyNet(torch.nn.Module):
    """Conv + linear on a 1x8x8 input; ``hidden`` sets the size (``hidden=256`` gives a ~0.5 MB file)."""

    def __init__(self, hidden: int = 0) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.hidden = torch.nn.Linear(512, hidden) if hidden else torch.nn.Identity()
        self.fc = torch.nn.Linear(hidden or 512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.hidden(torch.relu(self.conv(x)).flatten(1))))


def make_onnx(path: Path, hidden: int = 0, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """Export :class:`TinyNet` to ``path`` (input ``x`` of shape 1x1x8x8) and return it with the module."""
    torch.manual_seed(seed)
    model = TinyNet(hidden).eval()
    torch.onnx.export(model, (torch.randn(1, 1, 8, 8),), str(path), dynamo=True, external_data=False, verbose=False)
    return path, model


def _schema(extra_site: Path | None = None):
    try:
        return importlib.import_module("ai_edge_litert.schema_py_generated")
    except ImportError:
        if extra_site is None:
            raise
    # The schema is pure Python (flatbuffers only): take it from the emulated device's wheels.
    spec = importlib.util.spec_from_file_location("litert_schema", extra_site / "ai_edge_litert" / "schema_py_generated.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["litert_schema"] = mod
    spec.loader.exec_module(mod)
    return mod


def make_tflite(path: Path, seed: int = 0, extra_site: Path | None = None) -> tuple[Path, np.ndarray, np.ndarray]:
    """Write a one-op TFLite model ``y = x @ W.T + b`` (x: 1x8 float32, y: 1x4); return path, W, b."""
    import flatbuffers

    s = _schema(extra_site)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 8)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    model = s.ModelT()
    model.version = 3
    model.description = "edgeslim tiny fc"
    bufs = []
    for data in (None, w, b):
        buf = s.BufferT()
        if data is not None:
            buf.data = np.frombuffer(data.tobytes(), dtype=np.uint8)
        bufs.append(buf)
    model.buffers = bufs
    tensors = []
    for name, shape, buffer in (("x", [1, 8], 0), ("w", [4, 8], 1), ("b", [4], 2), ("y", [1, 4], 0)):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, shape, s.TensorType.FLOAT32, buffer
        tensors.append(t)
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    model.operatorCodes = [code]
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = s.FullyConnectedOptionsT()
    sub = s.SubGraphT()
    sub.tensors, sub.inputs, sub.outputs, sub.operators, sub.name = tensors, [0], [3], [op], "main"
    model.subgraphs = [sub]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path, w, b
