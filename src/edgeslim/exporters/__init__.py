"""Exporters: verified ONNX, TFLite (LiteRT) and TensorRT artefacts from edgeslim models.

``edgeslim.export(model, "onnx", "model.onnx", x, quant="int8")`` writes the artefact
atomically, runs it in its own runtime on real images and compares it with PyTorch.
Exporters are registered in :data:`~edgeslim.exporters.base.EXPORTERS` (one file each); this
package imports the built-in ones so that they are registered before any lookup.
"""

from edgeslim.exporters import onnx, tensorrt, tflite  # noqa: F401  (registration of the built-in exporters)
from edgeslim.exporters.api import ExportResult, export
from edgeslim.exporters.base import EXPORTERS, Exporter, Runner, get_exporter
from edgeslim.exporters.config import (
    ActivationType,
    ExportOptions,
    Format,
    IODType,
    Layout,
    Method,
    Precision,
    QuantSpec,
    Tolerance,
)
from edgeslim.exporters.errors import (
    ExportConfigError,
    ExportError,
    ExportVerificationError,
    MissingBackendError,
    OutputExistsError,
    UnsupportedOpError,
)
from edgeslim.exporters.inspect import ArtifactInfo, inspect_artifact
from edgeslim.exporters.verify import VerificationReport

__all__ = [
    "EXPORTERS",
    "ActivationType",
    "ArtifactInfo",
    "ExportConfigError",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "ExportVerificationError",
    "Exporter",
    "Format",
    "IODType",
    "Layout",
    "Method",
    "MissingBackendError",
    "OutputExistsError",
    "Precision",
    "QuantSpec",
    "Runner",
    "Tolerance",
    "UnsupportedOpError",
    "VerificationReport",
    "export",
    "get_exporter",
    "inspect_artifact",
]
