"""The inference runtimes a bench (and the exporters' verification) runs artefacts in.

One file per runtime holds its runner (:mod:`.onnxruntime`, :mod:`.litert`): plain classes that
need only numpy and the runtime module, used by the host and built into the uploadable agent
(:func:`edgeslim.device_bench.agent_build.build_agent`). Each runner class names its runtime
(``name``, ``module``, ``pip_name``, ``suffixes``, ``wheels``); :data:`RUNTIMES` holds the
host-side :class:`RuntimeSpec` made from it (which file it runs, how it is installed, which
wheels ``edgeslim device setup`` fetches).
"""

from __future__ import annotations

from edgeslim.device_bench.runtimes.base import RUNTIMES, RuntimeSpec, register_runtime, runtimes_for
from edgeslim.device_bench.runtimes.litert import LiteRtRunner, TfliteRuntimeRunner
from edgeslim.device_bench.runtimes.onnxruntime import OnnxRuntimeRunner
from edgeslim.device_bench.runtimes.tensorrt import TensorRtRunner

#: The runner classes, in the agent's order of preference per suffix.
RUNNERS = (OnnxRuntimeRunner, LiteRtRunner, TfliteRuntimeRunner, TensorRtRunner)
ONNXRUNTIME = register_runtime(RuntimeSpec.of(OnnxRuntimeRunner))
AI_EDGE_LITERT = register_runtime(RuntimeSpec.of(LiteRtRunner))
TFLITE_RUNTIME = register_runtime(RuntimeSpec.of(TfliteRuntimeRunner))
TENSORRT = register_runtime(RuntimeSpec.of(TensorRtRunner))

__all__ = ["AI_EDGE_LITERT", "ONNXRUNTIME", "RUNNERS", "RUNTIMES", "TENSORRT", "TFLITE_RUNTIME", "LiteRtRunner",
           "OnnxRuntimeRunner", "RuntimeSpec", "TensorRtRunner", "TfliteRuntimeRunner", "register_runtime", "runtimes_for"]
