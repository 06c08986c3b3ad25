"""What is inside an artefact: ops, tensor dtypes, quantization parameters (ONNX and TFLite).

``inspect_artifact(path).float_compute_ops()`` lists the compute ops (conv, matmul, add, mean
...) that run in float — empty for a really integer model; it catches e.g. the float residual
ADDs wrapped in QUANTIZE/DEQUANTIZE that litert-torch's own PT2E route leaves behind. For ONNX
QDQ graphs an op's compute dtype is the dtype its ``DequantizeLinear`` inputs were stored in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.exporters.errors import ExportError
from edgeslim.registry import Registry

#: Ops whose arithmetic matters for "is this really integer".
COMPUTE_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "AveragePool",
    "GlobalAveragePool", "ReduceMean", "Concat",
    "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL", "ADD", "SUB",
    "MUL", "DIV", "MEAN", "SUM", "AVERAGE_POOL_2D", "CONCATENATION",
})


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: name, dtype, shape, quantization parameters (empty when float)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()
    constant: bool = False


@dataclass(frozen=True)
class OpInfo:
    """One op: type, name, the dtypes it reads and writes, and the dtype it computes in."""

    type: str
    name: str
    input_dtypes: tuple[str, ...]
    output_dtypes: tuple[str, ...]
    compute_dtype: str


@dataclass
class ArtifactInfo:
    """The inspection of one artefact."""

    format: str
    path: str
    ops: list[OpInfo] = field(default_factory=list)
    tensors: list[TensorInfo] = field(default_factory=list)
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)

    def op_counts(self) -> dict[str, int]:
        """``{op type: count}``."""
        return dict(Counter(op.type for op in self.ops))

    def compute_dtypes(self) -> dict[str, int]:
        """``{compute dtype: number of compute ops}``."""
        return dict(Counter(op.compute_dtype for op in self.ops if op.type in COMPUTE_OPS))

    def float_compute_ops(self) -> list[OpInfo]:
        """Compute ops that run in float (empty for a fully integer model)."""
        return [op for op in self.ops if op.type in COMPUTE_OPS and op.compute_dtype.startswith(("float", "bfloat"))]

    def weight_dtypes(self) -> dict[str, int]:
        """``{dtype: number of constant tensors with more than 16 elements}`` (weights, not shapes)."""
        return dict(Counter(t.dtype for t in self.tensors if t.constant and int(np.prod(t.shape or (1,))) > 16))

    def summary(self) -> dict[str, Any]:
        """A short JSON-able summary (for ``ExportResult`` and the CLI)."""
        return {
            "ops": self.op_counts(),
            "compute_dtypes": self.compute_dtypes(),
            "weight_dtypes": self.weight_dtypes(),
            "float_compute_ops": len(self.float_compute_ops()),
            "inputs": [asdict(t) for t in self.inputs],
            "outputs": [asdict(t) for t in self.outputs],
        }


INSPECTORS: Registry[Any] = Registry("artefact inspector")


@INSPECTORS.register("onnx")
def inspect_onnx(path: Path) -> ArtifactInfo:
    """Inspect an ONNX file (QDQ-aware)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph

    def dt(code: int) -> str:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code))) if code else "unknown"

    inits = {i.name: i for i in g.initializer}
    types: dict[str, str] = {i.name: dt(i.data_type) for i in g.initializer}
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in list(inferred.graph.value_info) + list(g.input) + list(g.output):
        types.setdefault(vi.name, dt(vi.type.tensor_type.elem_type))
    producer = {o: n for n in g.node for o in n.output}
    info = ArtifactInfo("onnx", str(path))
    for name, init in inits.items():
        arr_shape = tuple(int(d) for d in init.dims)
        info.tensors.append(TensorInfo(name, dt(init.data_type), arr_shape, constant=True))
    for n in g.node:
        if n.op_type == "Constant":
            continue
        in_dt = []
        for i in n.input:
            p = producer.get(i)
            if p is not None and p.op_type == "DequantizeLinear":
                in_dt.append(types.get(p.input[0], "unknown"))
            elif i:
                in_dt.append(types.get(i, "float32"))
        act = [d for i, d in zip(n.input, in_dt, strict=False) if i not in inits or producer.get(i)]
        compute = _widest(act or in_dt)
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits:
            zp = numpy_helper.to_array(inits[n.input[2]])
            sc = numpy_helper.to_array(inits[n.input[1]]) if n.input[1] in inits else np.array([])
            types[n.output[0]] = str(zp.dtype)
            info.tensors.append(
                TensorInfo(n.output[0], str(zp.dtype), (), tuple(map(float, sc.ravel()[:8])), tuple(map(int, zp.ravel()[:8])))
            )
        info.ops.append(OpInfo(n.op_type, n.name, tuple(in_dt), tuple(types.get(o, "float32") for o in n.output), compute))
    for coll, dest in ((g.input, info.inputs), (g.output, info.outputs)):
        for vi in coll:
            shape = tuple(d.dim_value if d.dim_value else -1 for d in vi.type.tensor_type.shape.dim)
            dest.append(TensorInfo(vi.name, dt(vi.type.tensor_type.elem_type), shape))
    return info


def _widest(dtypes: list[str]) -> str:
    """The dtype an op computes in: float if any input is float, else the widest integer."""
    if any(d.startswith(("float", "bfloat")) for d in dtypes):
        return next(d for d in dtypes if d.startswith(("float", "bfloat")))
    ints = [d for d in dtypes if d.startswith(("int", "uint")) and d not in {"int64", "int32"}]
    return max(ints, key=lambda d: np.dtype(d).itemsize) if ints else (dtypes[0] if dtypes else "unknown")


@INSPECTORS.register("tflite")
def inspect_tflite(path: Path) -> ArtifactInfo:
    """Inspect a TFLite file (reads the flatbuffer through the LiteRT interpreter)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    details = {d["index"]: d for d in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    produced = {o for op in ops for o in op["outputs"]}
    graph_inputs = {d["index"] for d in interp.get_input_details()}

    def tinfo(d: dict[str, Any]) -> TensorInfo:
        q = d.get("quantization_parameters") or {}
        return TensorInfo(
            str(d["name"]), np.dtype(d["dtype"]).name, tuple(int(s) for s in d["shape"]),
            tuple(float(s) for s in np.asarray(q.get("scales", []))[:8]),
            tuple(int(z) for z in np.asarray(q.get("zero_points", []))[:8]),
            constant=d["index"] not in produced and d["index"] not in graph_inputs,
        )

    info = ArtifactInfo("tflite", str(path))
    info.tensors = [tinfo(d) for d in details.values()]
    for op in ops:
        ins = [i for i in op["inputs"] if i >= 0]
        in_dt = tuple(np.dtype(details[i]["dtype"]).name for i in ins)
        act = [np.dtype(details[i]["dtype"]).name for i in ins if i in produced or i in graph_inputs]
        info.ops.append(OpInfo(
            str(op["op_name"]), str(details[op["outputs"][0]]["name"]) if op["outputs"] else "",
            in_dt, tuple(np.dtype(details[o]["dtype"]).name for o in op["outputs"]), _widest(act or list(in_dt)),
        ))
    info.inputs = [tinfo(d) for d in interp.get_input_details()]
    info.outputs = [tinfo(d) for d in interp.get_output_details()]
    return info


def inspect_artifact(path: str | Path, fmt: str | None = None) -> ArtifactInfo:
    """Inspect an ONNX or TFLite file (format from ``fmt`` or the suffix).

    Raises:
        ExportError: Unknown format or unreadable file.
    """
    p = Path(path)
    name = fmt or p.suffix.lstrip(".")
    try:
        return INSPECTORS.get(name)(p)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"cannot inspect {p} as {name}: {type(exc).__name__}: {exc}") from exc


__all__ = ["COMPUTE_OPS", "INSPECTORS", "ArtifactInfo", "OpInfo", "TensorInfo", "inspect_artifact", "inspect_onnx", "inspect_tflite"]
