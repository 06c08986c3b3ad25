"""Quantization on the torch.ao family: PT2E PTQ and QAT, calibrators, schemes, mixed precision.

``quantize(model, example_inputs, config, calibration=loader)`` for PTQ; ``prepare_qat`` /
``convert`` for QAT inside your own training loop. Importing this package registers the
``quantized`` saved-model format.
"""

from edgeslim.quiet import quiet_logs

with quiet_logs():  # torchao's import-time log noise (edgeslim.quiet), for this import only
    from edgeslim.plugin.quantization import io as _io  # noqa: F401  (registers the "quantized" format)
    from edgeslim.plugin.quantization import pattern_cache as _pattern_cache
    from edgeslim.plugin.quantization.api import QuantResult, calibrate, convert, prepare_qat, quantize
    from edgeslim.plugin.quantization.coded import CodedWeight
    from edgeslim.plugin.quantization.config import (
        ActivationSpec,
        Granularity,
        LayerConfig,
        Mode,
        QuantConfig,
        WeightSpec,
    )
    from edgeslim.plugin.quantization.qat import QATSchedule

_pattern_cache.install()  # torchao traces each rewrite pattern once per process (pattern_cache)

__all__ = [
    "ActivationSpec",
    "CodedWeight",
    "Granularity",
    "LayerConfig",
    "Mode",
    "QATSchedule",
    "QuantConfig",
    "QuantResult",
    "WeightSpec",
    "calibrate",
    "convert",
    "prepare_qat",
    "quantize",
]
