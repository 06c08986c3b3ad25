"""Host-side facts about the inference runtimes the agent can drive (one file per runtime).

The runners themselves live in the self-contained :mod:`edgeslim.device_bench.agent`; this
registry tells the host which runtime reads which file, how it is installed and which wheels
``edgeslim device setup`` fetches for it.
"""

from __future__ import annotations

from edgeslim.device_bench.runtimes.base import RUNTIMES, RuntimeSpec, register_runtime, runtimes_for
from edgeslim.device_bench.runtimes.litert import AI_EDGE_LITERT, TFLITE_RUNTIME
from edgeslim.device_bench.runtimes.onnxruntime import ONNXRUNTIME

__all__ = ["AI_EDGE_LITERT", "ONNXRUNTIME", "RUNTIMES", "TFLITE_RUNTIME", "RuntimeSpec", "register_runtime",
           "runtimes_for"]
