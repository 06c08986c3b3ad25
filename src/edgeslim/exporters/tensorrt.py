"""The TensorRT exporter: an engine built from edgeslim's ONNX on the NVIDIA GPU that will run it.

Routes (the ONNX file is written by :mod:`edgeslim.exporters.onnx`, then parsed by TensorRT's
``OnnxParser`` into a strongly typed network where the installed TensorRT has them):

- ``fp32``: the fp32 ONNX file; TF32 is turned off so the engine computes what PyTorch does.
- ``fp16``: the model is exported with fp16 weights and compute (float32 input and output), so the
  precision is in the network itself (TensorRT 11 has no FP16 builder flag; 10.x also gets it set).
- ``int8``: explicit quantization: the QDQ ONNX with signed, symmetric int8 activations (TensorRT
  accepts only zero points of 0), so the engine keeps edgeslim's scales and per-layer precisions;
  no TensorRT calibrator is involved.

An engine runs only on the GPU model and TensorRT version it was built with; it is built here and
verified here, in the same :class:`~edgeslim.device_bench.runtimes.tensorrt.TensorRtRunner` that
``edgeslim bench --runtime tensorrt`` uses. Without the ``tensorrt`` package, a CUDA GPU or the
NVIDIA driver, :meth:`TensorRtExporter.check` raises :class:`MissingBackendError` naming each.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeslim.device_bench.runtimes.tensorrt import TensorRtRunner
from edgeslim.exporters.base import EXPORTERS, ExportJob, Runner
from edgeslim.exporters.config import ActivationType, Layout, Precision
from edgeslim.exporters.errors import ExportConfigError, ExportError, MissingBackendError
from edgeslim.exporters.inspect import INSPECTORS, ArtifactInfo, TensorInfo

#: Precisions offered for engines.
OFFERED = (Precision.FP32, Precision.FP16, Precision.INT8)
#: Workspace limit for the builder (bytes).
WORKSPACE_BYTES = 1 << 30


def missing_backend() -> list[str]:
    """What this machine lacks to build and run TensorRT engines (empty when nothing)."""
    missing = []
    try:
        trt = importlib.import_module("tensorrt")
        if not hasattr(trt, "Builder"):
            missing.append(
                f"the `tensorrt` Python package (`import tensorrt` found {getattr(trt, '__file__', trt)!r}, "
                "which is not NVIDIA's TensorRT: a file named tensorrt.py shadows it)"
            )
    except ImportError as exc:
        missing.append(f"the `tensorrt` Python package (import failed: {exc})")
    driver = os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None
    if not driver:
        missing.append("the NVIDIA driver (no /proc/driver/nvidia/version, no nvidia-smi)")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    return missing


def require_backend() -> None:
    """Raise :class:`MissingBackendError` naming what is missing for TensorRT engines."""
    missing = missing_backend()
    if missing:
        raise MissingBackendError(
            "TensorRT export needs an NVIDIA GPU with its driver and the `tensorrt` Python package; missing on this "
            f"machine: {'; '.join(missing)}. Build the engine on the GPU machine that will run it (there: pip "
            "install tensorrt-cu13, or the tensorrt-cu12 wheel for a CUDA 12 driver; on Jetson: JetPack's "
            "python3-libnvinfer), or export --format onnx here and build the engine there"
        )


class Fp16Model(torch.nn.Module):
    """The model in fp16 with a float32 input and output (the precision travels in the ONNX graph)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def _write_onnx(job: ExportJob, dest: Path) -> None:
    """The ONNX file the engine is built from (see the module docstring)."""
    import copy

    from edgeslim.exporters.onnx import OnnxExporter, torch_to_onnx

    precision = job.options.quant.precision
    if precision is Precision.FP16:
        model = Fp16Model(copy.deepcopy(job.model).eval())
        job.metadata["dynamic_axes"] = torch_to_onnx(model, job.example, dest)
        return
    opts = job.options
    if precision is Precision.INT8:
        opts = dataclasses.replace(opts, activations=ActivationType.S8S8)
    onnx_job = dataclasses.replace(job, options=opts, metadata={})
    OnnxExporter().write(onnx_job, dest)
    job.metadata["onnx"] = {k: v for k, v in onnx_job.metadata.items() if k in ("route", "activations", "dynamic_axes")}
    if precision is Precision.INT8:
        _require_symmetric(dest)


def _require_symmetric(path: Path) -> None:
    """Refuse a QDQ file with non-zero zero points (TensorRT's explicit quantization is symmetric)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2] in inits:
            zp = numpy_helper.to_array(inits[node.input[2]])
            if np.any(zp != 0):
                raise ExportConfigError(
                    f"TensorRT takes symmetric int8 quantization only; {node.name or node.op_type} has zero point "
                    f"{zp.ravel()[:4].tolist()}. Quantize with symmetric activations (export a float model: edgeslim "
                    "then quantizes it with signed symmetric activations for TensorRT)"
                )


def build_engine(onnx_path: Path, dest: Path, example_shape: tuple[int, ...], precision: Precision) -> dict[str, Any]:
    """Parse ``onnx_path`` with TensorRT and write the serialized engine to ``dest``; return build facts.

    Raises:
        ExportError: The parser or builder failed (their messages included).
    """
    import time

    trt = importlib.import_module("tensorrt")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly is not None:
        flags |= 1 << int(strongly)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser refused the {precision.value} ONNX file: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if strongly is None:  # TensorRT < 9.1: weakly typed network, precision by flags
        for flag in {Precision.FP16: ("FP16",), Precision.INT8: ("INT8", "FP16")}.get(precision, ()):
            config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    one = (1, *example_shape[1:])
    batch = max(int(example_shape[0]), 1)
    profile.set_shape(name, one, (batch, *example_shape[1:]), (max(batch, 64), *example_shape[1:]))
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        raise ExportError(f"TensorRT could not build a {precision.value} engine (see its log above)")
    dest.write_bytes(bytes(plan))
    return {
        "tensorrt": trt.__version__,
        "build_s": seconds,
        "gpu": torch.cuda.get_device_name(0),
        "profile_batch": [1, batch, max(batch, 64)],
        "strongly_typed": strongly is not None,
    }


class TensorRtVerifyRunner(TensorRtRunner):
    """The bench runner over an engine, called with NCHW float32 batches (verification and evaluation)."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.predict(x))


@EXPORTERS.register("tensorrt")
class TensorRtExporter:
    """TensorRT engines (see the module docstring)."""

    suffix = ".engine"

    def check(self, job: ExportJob) -> None:
        """Refuse what a TensorRT engine does not offer, and a machine without GPU, driver or TensorRT."""
        if job.options.quant.precision not in OFFERED:
            raise ExportConfigError(
                f"quantization {job.options.quant.label!r} is not offered for TensorRT; TensorRT offers "
                f"{', '.join(p.value for p in OFFERED)} (int8: explicit Q/DQ quantization)"
            )
        if job.options.layout is not Layout.NCHW:
            raise ExportConfigError("TensorRT engines take NCHW input (as PyTorch and the ONNX file)")
        require_backend()

    def write(self, job: ExportJob, dest: Path) -> None:
        """Write the ONNX file to a temporary folder, build the engine from it into ``dest``."""
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            _write_onnx(job, onnx_path)
            job.metadata["engine"] = build_engine(
                onnx_path, dest, tuple(job.example.shape), job.options.quant.precision
            )
        job.metadata["route"] = f"edgeslim ONNX ({job.options.quant.label}) -> TensorRT OnnxParser -> engine"

    def open(self, path: Path, job: ExportJob | None = None) -> Runner:
        """The engine in a TensorRT execution context on the GPU."""
        return TensorRtVerifyRunner(path)


@INSPECTORS.register("tensorrt")
def inspect_engine(path: Path) -> ArtifactInfo:
    """The engine's input and output tensors (an engine's layers are not listed)."""
    runner = TensorRtRunner(path)
    info = ArtifactInfo("tensorrt", str(path))
    for name in runner.inputs + runner.outputs:
        shape = tuple(int(d) for d in runner.engine.get_tensor_shape(name))
        dtype = str(runner.engine.get_tensor_dtype(name)).rsplit(".", 1)[-1].lower()
        (info.inputs if name in runner.inputs else info.outputs).append(TensorInfo(name, dtype, shape))
    return info


__all__ = [
    "OFFERED",
    "TensorRtExporter",
    "TensorRtVerifyRunner",
    "build_engine",
    "inspect_engine",
    "missing_backend",
    "require_backend",
]
