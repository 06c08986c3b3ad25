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

#: The runner classes, in the agent's order of preference per suffix: the one list of runtimes. Each is
#: registered in :data:`RUNTIMES` here, and the agent build pastes the same classes into the agent.
RUNNERS = (OnnxRuntimeRunner, LiteRtRunner, TfliteRuntimeRunner, TensorRtRunner)
for _runner in RUNNERS:
    register_runtime(RuntimeSpec.of(_runner))

__all__ = ["RUNNERS", "RUNTIMES", "LiteRtRunner", "OnnxRuntimeRunner", "RuntimeSpec", "TensorRtRunner",
           "TfliteRuntimeRunner", "register_runtime", "runtimes_for"]
