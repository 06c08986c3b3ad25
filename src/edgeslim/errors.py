"""The exception hierarchy of edgeslim.

Every error edgeslim raises on purpose is an :class:`EdgeslimError`; its message names the
module, file or host involved and says what to do about it.
"""

from __future__ import annotations


class EdgeslimError(Exception):
    """Base class of every error edgeslim raises on purpose."""


class ConfigError(EdgeslimError, ValueError):
    """A configuration value is invalid (raised before any work is done)."""


class SpecError(ConfigError):
    """A quantization spec string (``int8``, ``log2:4/a16`` ...) cannot be parsed.

    The message names the text and lists the accepted spellings. The quantization plugin raises
    it as ``QuantSpecError`` (also a ``QuantConfigError``), the exporters as ``ExportSpecError``
    (also an ``ExportConfigError``).
    """


class DataError(EdgeslimError, FileNotFoundError):
    """A dataset is missing or malformed."""


class ModelLoadError(EdgeslimError):
    """A model name, checkpoint or saved file cannot be loaded."""


class RegistryError(EdgeslimError, KeyError):
    """A registry lookup or registration failed."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class PruningError(EdgeslimError):
    """Pruning could not be carried out on this model."""


class UntraceableModelError(PruningError):
    """torch-pruning could not build a dependency graph for the model."""


class TargetUnreachableError(PruningError):
    """A pruning target (params, MACs, bytes) cannot be met; the message gives the best reachable."""
