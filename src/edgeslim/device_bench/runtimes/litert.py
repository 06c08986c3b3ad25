"""TFLite interpreters: Google's ai-edge-litert (preferred) and the legacy tflite-runtime."""

from __future__ import annotations

from edgeslim.device_bench.runtimes.base import RuntimeSpec, register_runtime

AI_EDGE_LITERT = register_runtime(
    RuntimeSpec("ai-edge-litert", "ai_edge_litert", "ai-edge-litert", (".tflite",), ("numpy", "ai-edge-litert"))
)
TFLITE_RUNTIME = register_runtime(
    RuntimeSpec("tflite-runtime", "tflite_runtime", "tflite-runtime", (".tflite",), ("numpy<2", "tflite-runtime"))
)
