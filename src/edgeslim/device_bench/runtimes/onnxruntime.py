"""ONNX Runtime (CPU execution provider): THE runner of ``.onnx`` / ``.ort`` files, on the host and on a board.

This file depends on the standard library, numpy and onnxruntime only (no torch, no edgeslim):
the exporter's verification (:class:`edgeslim.exporters.onnx.OrtRunner`) subclasses
:class:`OnnxRuntimeRunner`, and the uploadable bench agent contains this file verbatim
(:func:`edgeslim.device_bench.agent_build.build_agent`), so both run the same session settings.

Runtime settings travel in the artefact: the ONNX exporter writes
``edgeslim.ort.graph_optimization_level`` (``disable_all``, ``enable_basic``, ``enable_extended``,
``enable_layout`` or ``enable_all``) into the model's ``metadata_props`` (ONNX Runtime 1.32 computes
16-bit-activation QDQ graphs wrongly with its optimizations on). The setting is needed before the
session exists and a board has no ``onnx`` package, so :func:`read_onnx_metadata` reads the
ModelProto's top-level protobuf fields itself (the graph is skipped by its length prefix). Intra-op
threads never spin-wait after a run (``allow_spinning=0``): a finished session's spinning threads
otherwise steal the cores from whatever is timed next.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

try:
    import numpy as np
except ImportError:  # on a board without numpy the agent reports it (its probe still runs)
    np = None  # type: ignore[assignment]

#: ``metadata_props`` key: the ONNX Runtime graph optimization level the artefact must run with.
GRAPH_OPTIMIZATION_KEY = "edgeslim.ort.graph_optimization_level"
#: ``metadata_props`` key: the input shape the artefact was exported for (``1,3,32,32``).
EXAMPLE_SHAPE_KEY = "edgeslim.example_shape"
#: The level used when neither the caller nor the model says (ONNX Runtime's own default).
DEFAULT_GRAPH_OPTIMIZATION = "enable_all"
_MODEL_METADATA_FIELD = 14  # ModelProto.metadata_props (repeated StringStringEntryProto {1: key, 2: value})
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
               "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("malformed protobuf varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _protobuf_fields(buf: memoryview) -> Iterator[tuple[int, memoryview | None]]:
    """``(field number, bytes of a length-delimited field or None)`` for each top-level field of a message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        wire = key & 7
        value = None
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value = buf[pos : pos + size]
            pos += size
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated protobuf message")
        yield key >> 3, value


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The model-level ``metadata_props`` of an ONNX file, without the ``onnx`` package.

    Args:
        path: An ``.onnx`` file (a serialized ``ModelProto``).

    Returns:
        ``{key: value}`` (empty if the model carries none).

    Raises:
        ValueError: The file is not a well-formed protobuf message.
    """
    with open(path, "rb") as f:
        buf = memoryview(f.read())
    out: dict[str, str] = {}
    for number, value in _protobuf_fields(buf):
        if number == _MODEL_METADATA_FIELD and value is not None:
            entry = {n: bytes(v).decode("utf-8") for n, v in _protobuf_fields(value) if v is not None}
            out[entry.get(1, "")] = entry.get(2, "")
    return out


def _ort_batches(run: Any, x: Any, batch: int | None) -> Any:
    """``run`` over ``x`` in chunks of a fixed ``batch`` (the last one padded), or in one go if ``batch`` is None."""
    if batch is None or len(x) == batch:
        return run(x)
    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        pad = batch - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        outs.append(run(chunk)[: batch - pad])
    return np.concatenate(outs)


class OnnxRuntimeRunner:
    """An ONNX file in an ONNX Runtime CPU session.

    Args:
        path: The ``.onnx`` (or ``.ort``) file.
        threads: Intra-op threads (None or 0: ONNX Runtime's default).
        spinning: Let intra-op threads spin-wait after a run (ONNX Runtime's default; off here).
        graph_optimization: A level name (``disable_all`` ... ``enable_all``); None: the one the
            model's metadata asks for (:data:`GRAPH_OPTIMIZATION_KEY`), else ``enable_all``.

    Attributes:
        session: The ``onnxruntime.InferenceSession``.
        input_name: The first input's name.
        batch: The first input's fixed batch size, or None if it is dynamic.
        metadata: The model's ``metadata_props``.
        settings: The session settings applied (recorded in bench results).

    Raises:
        ValueError: Unknown graph optimization level (from the argument or the model).
    """

    name = "onnxruntime"
    module = "onnxruntime"
    pip_name = "onnxruntime"
    suffixes = (".onnx", ".ort")
    wheels = ("numpy", "onnxruntime")

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None, spinning: bool = False,
                 graph_optimization: str | None = None) -> None:
        ort = importlib.import_module(self.module)
        self.metadata = {} if str(path).lower().endswith(".ort") else read_onnx_metadata(path)
        level = graph_optimization or self.metadata.get(GRAPH_OPTIMIZATION_KEY) or DEFAULT_GRAPH_OPTIMIZATION
        source = "argument" if graph_optimization else "model metadata" if GRAPH_OPTIMIZATION_KEY in self.metadata else "default"
        known = [n[4:].lower() for n in ort.GraphOptimizationLevel.__members__ if n.startswith("ORT_")]
        if level not in known:
            raise ValueError(f"unknown ONNX Runtime graph optimization level {level!r} ({source}); known: {', '.join(known)}")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, "ORT_" + level.upper())
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        first = self.session.get_inputs()[0]
        self.input_name = str(first.name)
        self.input_dtype = _ORT_DTYPES.get(first.type, "float32")
        dim = first.shape[0] if first.shape else None
        self.batch = dim if isinstance(dim, int) and dim > 0 else None
        self.settings: dict[str, Any] = {"graph_optimization_level": level, "graph_optimization_source": source,
                                         "intra_op_threads": threads or 0, "allow_spinning": spinning}

    def input_specs(self) -> list[tuple[str, list[int], str]]:
        """``(name, shape, dtype)`` per input.

        A dynamic batch reads as 1; other dynamic dimensions (an image's height and width) take the
        shape the file was exported for (:data:`EXAMPLE_SHAPE_KEY`), else -1: they cannot be guessed
        (timing a 1x1 image would be meaningless), the inputs must come from the caller.
        """
        example = [int(d) for d in self.metadata.get(EXAMPLE_SHAPE_KEY, "").split(",") if d.strip().isdigit()]
        specs = []
        for k, i in enumerate(self.session.get_inputs()):
            shape = []
            for j, d in enumerate(i.shape):
                if isinstance(d, int) and d > 0:
                    shape.append(d)
                elif j == 0:
                    shape.append(1)
                else:
                    shape.append(example[j] if k == 0 and len(example) == len(i.shape) else -1)
            specs.append((i.name, shape, _ORT_DTYPES.get(i.type, "float32")))
        return specs

    def run(self, feeds: Mapping[str, Any]) -> list[Any]:
        """Run once; ``feeds`` maps input names to arrays of the input's shape and dtype."""
        return list(self.session.run(None, dict(feeds)))

    def adapt(self, x: Any) -> Any:
        """``x`` as the first input takes it (its dtype; the layout is the model's own, NCHW from torch)."""
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    def predict(self, x: Any) -> Any:
        """The first output for a batch ``x`` of any size fed to the first input."""
        return _ort_batches(lambda b: self.session.run(None, {self.input_name: b})[0], self.adapt(x), self.batch)
