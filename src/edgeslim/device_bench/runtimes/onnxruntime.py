"""ONNX Runtime (CPU execution provider): runs ``.onnx`` and ``.ort`` artefacts."""

from __future__ import annotations

from edgeslim.device_bench.runtimes.base import RuntimeSpec, register_runtime

ONNXRUNTIME = register_runtime(
    RuntimeSpec("onnxruntime", "onnxruntime", "onnxruntime", (".onnx", ".ort"), ("numpy", "onnxruntime"))
)
