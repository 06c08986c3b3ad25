"""What edgeslim knows about a prepared or converted graph, kept beside it (never on it).

:func:`~edgeslim.plugin.quantization.api.prepare` records a :class:`QuantInfo` for the graph it
returns; :func:`~edgeslim.plugin.quantization.api.convert` and loading a quantized file record
one for the converted graph. The :class:`~edgeslim.plugin.quantization.api.QuantResult` carries
the same object (``result.info``), and the saved file's header stores it. The side table is a
``weakref.WeakKeyDictionary``: an entry lives exactly as long as its graph.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from typing import Any

from torch.fx import GraphModule

from edgeslim.plugin.quantization.config import Mode, QuantConfig
from edgeslim.plugin.quantization.errors import QuantizationError


@dataclass(frozen=True)
class QuantInfo:
    """The quantization metadata of one graph.

    Attributes:
        config: The config it was prepared with.
        mode: PTQ or QAT.
        example_shape: The input shape used to trace, calibrate and rebuild it.
        float_structure: The float ancestor as the ``pruned`` format dumps it (architecture,
            manifest, masks, and ``state_dict`` — or, after loading a file saved without the
            float weights, their ``shapes`` instead).
        float_sha256: sha256 of the float ancestor's state_dict.
        left_float: Ops left in float because the quantizer does not handle them.
        layers: ``{layer name: quantized?}`` as annotated by the quantizer.
        observers: ``{observer/fake-quant module name: the layer it observes}`` (prepared graphs).
        converted: Whether the graph is converted (else: prepared, still to calibrate/train).
        report: The saved report (``QuantReport.to_dict()``) of a graph loaded from a file.
    """

    config: QuantConfig
    mode: Mode
    example_shape: tuple[int, ...]
    float_structure: dict[str, Any]
    float_sha256: str | None
    left_float: tuple[str, ...] = ()
    layers: dict[str, bool] = field(default_factory=dict)
    observers: dict[str, str] = field(default_factory=dict)
    converted: bool = False
    report: dict[str, Any] | None = None

    def as_converted(self, **changes: Any) -> QuantInfo:
        """A copy marked converted, with ``changes`` applied."""
        return replace(self, converted=True, **changes)


_INFO: weakref.WeakKeyDictionary[GraphModule, QuantInfo] = weakref.WeakKeyDictionary()


def remember(gm: GraphModule, info: QuantInfo) -> GraphModule:
    """Record ``info`` for ``gm`` (replacing any earlier entry) and return ``gm``."""
    _INFO[gm] = info
    return gm


def info_of(obj: Any) -> QuantInfo | None:
    """The :class:`QuantInfo` of a graph edgeslim prepared/converted/loaded (``None`` for anything else)."""
    return _INFO.get(obj) if isinstance(obj, GraphModule) else None


def require_info(gm: Any, what: str) -> QuantInfo:
    """:func:`info_of` or a :class:`QuantizationError` saying ``what`` needs edgeslim's graph.

    Raises:
        QuantizationError: ``gm`` was not produced by edgeslim's prepare/prepare_qat/convert/load
            (a copy of one, e.g. ``copy.deepcopy``, is not known either).
    """
    info = info_of(gm)
    if info is None:
        raise QuantizationError(
            f"{what} needs the graph returned by edgeslim's prepare_qat()/prepare()/convert()/load() "
            f"(got a {type(gm).__name__} edgeslim did not produce, or a copy of one): pass that object itself, "
            "or the QuantResult"
        )
    return info


__all__ = ["QuantInfo", "info_of", "remember", "require_info"]
