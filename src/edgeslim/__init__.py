"""edgeslim: prune, quantize, export and benchmark PyTorch models for edge devices.

The public API is re-exported here; heavy modules are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> "module:attribute"
_LAZY = {
    "EdgeslimError": "edgeslim.errors:EdgeslimError",
    "load": "edgeslim.io:load",
    "save": "edgeslim.io:save",
    "load_model": "edgeslim.models:load",
    "evaluate": "edgeslim.data:evaluate",
    "prune": "edgeslim.plugin.pruning.api:prune",
    "PruneConfig": "edgeslim.plugin.pruning.config:PruneConfig",
    "PruneResult": "edgeslim.plugin.pruning.api:PruneResult",
    "Target": "edgeslim.plugin.pruning.config:Target",
    "PruningSchedule": "edgeslim.plugin.pruning.schedule:PruningSchedule",
    "finetune": "edgeslim.plugin.pruning.finetune:finetune",
    "sensitivity": "edgeslim.plugin.pruning.sensitivity:sensitivity",
    "quantize": "edgeslim.plugin.quantization.api:quantize",
    "prepare_qat": "edgeslim.plugin.quantization.api:prepare_qat",
    "convert": "edgeslim.plugin.quantization.api:convert",
    "QuantConfig": "edgeslim.plugin.quantization.config:QuantConfig",
    "QuantResult": "edgeslim.plugin.quantization.api:QuantResult",
    "QATSchedule": "edgeslim.plugin.quantization.qat:QATSchedule",
    "CodedWeight": "edgeslim.plugin.quantization.coded:CodedWeight",
    "bench": "edgeslim.device_bench.api:bench",
    "BenchReport": "edgeslim.device_bench.api:BenchReport",
    "DeviceOptions": "edgeslim.device_bench.targets.base:DeviceOptions",
    "export": "edgeslim.exporters.api:export",
    "compress": "edgeslim.pipelines.runner:compress",
    "joint_search": "edgeslim.pipelines.joint:joint_search",
    "ExportResult": "edgeslim.exporters.api:ExportResult",
    "pack": "edgeslim.deep_compression.api:pack",
    "unpack": "edgeslim.deep_compression.api:unpack",
    "PackConfig": "edgeslim.deep_compression.config:PackConfig",
    "PackResult": "edgeslim.deep_compression.api:PackResult",
}

__all__ = [
    "BenchReport",
    "CodedWeight",
    "DeviceOptions",
    "EdgeslimError",
    "ExportResult",
    "PackConfig",
    "PackResult",
    "PruneConfig",
    "PruneResult",
    "PruningSchedule",
    "QATSchedule",
    "QuantConfig",
    "QuantResult",
    "Target",
    "bench",
    "compress",
    "convert",
    "evaluate",
    "export",
    "finetune",
    "joint_search",
    "load",
    "load_model",
    "pack",
    "prepare_qat",
    "prune",
    "quantize",
    "save",
    "sensitivity",
    "unpack",
]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'edgeslim' has no attribute {name!r}")
    from edgeslim.quiet import quiet_logs

    module, _, attr = target.partition(":")
    with quiet_logs():  # torchao's import-time log noise (edgeslim.quiet), for this import only
        value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
