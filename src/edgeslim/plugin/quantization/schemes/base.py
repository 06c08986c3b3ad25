"""The scheme protocol, its registry, and the level/grid helpers every scheme shares.

A scheme maps a weight tensor to integer ``codes`` and :class:`QParams`. Every scheme is
expressed on an **integer grid**: its levels are integers (``levels``) times a per-channel
``step``. That grid is what makes each scheme deployable — the converted PT2E model carries
the weight as a standard int8/int16 per-channel quantize/dequantize pair whose dequantized
values are exactly the scheme's levels, while exporters may ship the narrower ``codes`` plus
the codebook instead (:class:`~edgeslim.plugin.quantization.coded.CodedWeight`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from edgeslim.errors import RegistryError
from edgeslim.plugin.quantization.coded import CodedWeight
from edgeslim.registry import Registry
from edgeslim.spec import ACTIVATION_SCHEMES, MAX_BITS, MIN_BITS, WEIGHT_SCHEMES, Lowering, SchemeInfo, SchemeKind

INT8_QMAX = 127
INT16_QMAX = 32767


@dataclass(frozen=True)
class QParams:
    """What decodes a scheme's codes.

    Attributes:
        step: Per-channel grid step, ``[C]`` (``C = 1`` per tensor).
        levels: Integer grid levels per channel, ``[C, K]``, sorted ascending; ``code`` indexes them.
        zero_point: Per-channel integer zero point on the grid, ``[C]`` (0 for symmetric schemes).
        qmax: Largest grid magnitude (127: int8 grid, 32767: int16 grid).
        bits: Bits per code.
    """

    step: torch.Tensor
    levels: torch.Tensor
    zero_point: torch.Tensor
    qmax: int
    bits: int

    @property
    def codebook(self) -> torch.Tensor:
        """Float levels per channel ``[C, K]``."""
        return (self.levels - self.zero_point[:, None]).to(torch.float32) * self.step[:, None].to(torch.float32)


class Scheme(Protocol):
    """A weight quantization scheme (one file each under ``schemes/``, registered by name)."""

    def quantize(self, w: torch.Tensor, bits: int, *, per_channel: bool = True, **options: Any) -> tuple[torch.Tensor, QParams]:
        """Quantize ``w`` (output channels along dim 0) to ``(codes, params)``."""
        ...

    def dequantize(self, codes: torch.Tensor, params: QParams) -> torch.Tensor:
        """The float tensor the codes stand for."""
        ...


#: Weight quantization schemes by name (their implementations; what they are: :data:`edgeslim.spec.WEIGHT_SCHEMES`).
SCHEMES: Registry[Scheme] = Registry("quantization scheme")
#: Activation schemes by name: ``(ActivationSpec, qat) -> torchao QuantizationSpec`` (the PT2E annotation).
ACTIVATION_QSPECS: Registry[Callable[..., Any]] = Registry("activation quantization scheme")


def _declare(name: str, kind: SchemeKind | str, bits: tuple[int, int], lowering: Mapping[str, Lowering | str] | None,
             implementations: Registry[Any], infos: Registry[SchemeInfo]) -> SchemeInfo:
    """Check ``name`` is free in both registries and build its :class:`SchemeInfo` (registers nothing)."""
    for reg in (implementations, infos):
        if name in reg:
            raise RegistryError(f"{reg.kind} {name!r} is already registered (by {reg.get(name)!r}); pick another name")
    low, high = bits
    return SchemeInfo(name.lower(), SchemeKind(kind), low, high, {k: Lowering(v) for k, v in (lowering or {}).items()})


def register_scheme(name: str, *, kind: SchemeKind | str = SchemeKind.CODED, bits: tuple[int, int] = (MIN_BITS, MAX_BITS),
                    lowering: Mapping[str, Lowering | str] | None = None) -> Callable[[type], type]:
    """Class decorator: the one place a weight scheme is added.

    Registers an instance of the decorated class (a :class:`Scheme`) under ``name`` and declares
    what it is in :data:`edgeslim.spec.WEIGHT_SCHEMES`, which the spec parser, the quantizer, saved
    files and the exporters read.

    Args:
        name: The ``SCHEME`` of ``SCHEME:BITS`` (case-insensitive).
        kind: ``CODED`` (default: ``2^bits`` levels on an int8/int16 grid, e.g. log2), ``GRID``
            (every level of a uniform grid: stock affine observers) or ``FLOAT``.
        bits: Fewest and most bits the scheme takes (within 2..16).
        lowering: Export format -> :class:`~edgeslim.spec.Lowering`, overriding the kind's default
            (:data:`edgeslim.spec.DEFAULT_LOWERING`).

    Raises:
        RegistryError: ``name`` is already registered.
    """

    def deco(cls: type) -> type:
        info = _declare(name, kind, bits, lowering, SCHEMES, WEIGHT_SCHEMES)
        SCHEMES.register(name)(cls())
        WEIGHT_SCHEMES.register(name)(info)
        return cls

    return deco


def register_activation_scheme(name: str, *, kind: SchemeKind | str, bits: tuple[int, int],
                               lowering: Mapping[str, Lowering | str] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Function decorator: the one place an activation scheme is added.

    The decorated function maps ``(ActivationSpec, qat: bool)`` to the torchao
    ``QuantizationSpec`` that annotates the activation; what the scheme is goes to
    :data:`edgeslim.spec.ACTIVATION_SCHEMES` (arguments as in :func:`register_scheme`).

    Raises:
        RegistryError: ``name`` is already registered.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        info = _declare(name, kind, bits, lowering, ACTIVATION_QSPECS, ACTIVATION_SCHEMES)
        ACTIVATION_QSPECS.register(name)(fn)
        ACTIVATION_SCHEMES.register(name)(info)
        return fn

    return deco


def channels_view(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """``w`` as ``[C, N]`` (``C = 1`` per tensor), float32."""
    w = w.detach().to(torch.float32)
    return w.reshape(w.shape[0], -1) if per_channel and w.dim() > 1 else w.reshape(1, -1)


def nearest_level(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted per-row ``levels`` ``[C, K]`` for each entry of ``x`` ``[C, N]``."""
    mids = (levels[:, 1:] + levels[:, :-1]) / 2
    return torch.searchsorted(mids.contiguous(), x.contiguous()).clamp_(0, levels.shape[1] - 1)


def grid_qmax(max_int_level: int) -> int:
    """The narrowest standard integer grid (int8 or int16) holding ``±max_int_level``."""
    return INT8_QMAX if max_int_level <= INT8_QMAX else INT16_QMAX


def finish(w: torch.Tensor, wc: torch.Tensor, step: torch.Tensor, int_levels: torch.Tensor, qmax: int, bits: int) -> tuple[torch.Tensor, QParams]:
    """Sort integer levels, pick each entry's nearest level, return ``(codes, QParams)``.

    Args:
        w: The original weight (for the codes' shape).
        wc: ``w`` as ``[C, N]``.
        step: Per-channel step ``[C]`` (> 0).
        int_levels: Integer levels ``[C, K]`` (any order, within ``±qmax``).
        qmax: Grid bound.
        bits: Bits per code.
    """
    levels = int_levels.round().clamp(-qmax, qmax).sort(dim=1).values
    fl = levels.to(torch.float32) * step[:, None]
    codes = nearest_level(wc, fl)
    params = QParams(step.to(torch.float32), levels.to(torch.int64), torch.zeros(step.shape[0], dtype=torch.int64), qmax, bits)
    return codes.reshape(w.shape).to(torch.uint8 if bits <= 8 else torch.int32), params


def dequantize(codes: torch.Tensor, params: QParams) -> torch.Tensor:
    """Decode ``codes`` with ``params`` (shared by every grid scheme)."""
    return to_coded(codes, params).decode()


def to_coded(codes: torch.Tensor, params: QParams) -> CodedWeight:
    """Wrap ``(codes, params)`` as a :class:`CodedWeight` (per-tensor codebooks stay ``[K]``)."""
    book = params.codebook
    if book.shape[0] == 1 and codes.dim() > 0 and codes.shape[0] != 1:
        return CodedWeight(codes=codes, codebook=book[0], bits=params.bits, axis=0)
    if book.shape[0] == 1 and (codes.dim() == 0 or codes.shape[0] == 1):
        return CodedWeight(codes=codes, codebook=book[0], bits=params.bits, axis=0)
    return CodedWeight(codes=codes, codebook=book, bits=params.bits, axis=0)


def safe_max(wc: torch.Tensor) -> torch.Tensor:
    """Per-row max |w|, at least a tiny positive number (all-zero channels)."""
    return wc.abs().amax(dim=1).clamp_min(1e-12)


__all__ = [
    "ACTIVATION_QSPECS",
    "INT8_QMAX",
    "INT16_QMAX",
    "SCHEMES",
    "QParams",
    "Scheme",
    "channels_view",
    "dequantize",
    "finish",
    "grid_qmax",
    "nearest_level",
    "register_activation_scheme",
    "register_scheme",
    "safe_max",
    "to_coded",
]
