"""Errors of the quantization plugin (all :class:`~edgeslim.errors.EdgeslimError`)."""

from __future__ import annotations

from edgeslim.errors import ConfigError, EdgeslimError, SpecError


class QuantizationError(EdgeslimError):
    """Quantization could not be carried out on this model."""


class QuantConfigError(ConfigError, QuantizationError):
    """A quantization configuration value is invalid (bits out of range, unknown scheme ...)."""


class QuantSpecError(QuantConfigError, SpecError):
    """A quantization spec string cannot be parsed (see :func:`edgeslim.spec.parse_spec`)."""


class CalibrationError(QuantizationError):
    """Calibration failed: no data, or non-finite values met at a named layer."""


class UnsupportedOpError(QuantizationError):
    """The quantizer met ops it cannot quantize and ``strict=True`` was asked for."""


class ConversionError(QuantizationError):
    """The converted model does not compute what the fake-quantized model computed."""


__all__ = [
    "CalibrationError",
    "ConversionError",
    "QuantConfigError",
    "QuantSpecError",
    "QuantizationError",
    "UnsupportedOpError",
]
