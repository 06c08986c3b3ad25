"""Errors of the exporters (all :class:`~edgeslim.errors.EdgeslimError`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeslim.errors import ConfigError, EdgeslimError, SpecError

if TYPE_CHECKING:
    from edgeslim.exporters.verify import VerificationReport


class ExportError(EdgeslimError):
    """An artefact could not be produced."""


class ExportConfigError(ConfigError, ExportError):
    """An export option is invalid or not supported by the chosen format (raised before any work)."""


class ExportSpecError(ExportConfigError, SpecError):
    """The ``quant`` spec string cannot be parsed (see :func:`edgeslim.spec.parse_spec`)."""


class OutputExistsError(ExportError, FileExistsError):
    """The output file exists and overwriting was not asked for."""


class MissingBackendError(ExportError, ImportError):
    """An optional dependency of a format is not installed; the message names the extra."""


class UnsupportedOpError(ExportError):
    """A converter cannot handle an op of the model.

    Attributes:
        op: The op (``aten.xxx``, ONNX or TFLite op name) that failed, if known.
        module: The module (qualified name) the op belongs to, if known.
    """

    def __init__(self, message: str, *, op: str | None = None, module: str | None = None) -> None:
        super().__init__(message)
        self.op = op
        self.module = module


class ExportVerificationError(ExportError):
    """The artefact, run in its own runtime, does not match the PyTorch model.

    Attributes:
        report: The numbers (max abs error, cosine, top-1 agreement) and the tolerances.
    """

    def __init__(self, message: str, report: VerificationReport) -> None:
        super().__init__(message)
        self.report = report


class ExportAccuracyError(ExportError):
    """The artefact's top-1, run in its runtime, is too far below its float ancestor's on the same images.

    Attributes:
        check: The numbers (``AccuracyCheck``: both top-1s, images, drop, allowed drop).
    """

    def __init__(self, message: str, check: object) -> None:
        super().__init__(message)
        self.check = check


__all__ = [
    "ExportAccuracyError",
    "ExportConfigError",
    "ExportError",
    "ExportSpecError",
    "ExportVerificationError",
    "MissingBackendError",
    "OutputExistsError",
    "UnsupportedOpError",
]
