"""The quantization spec grammar: one parser for ``edgeslim.quantize`` and ``edgeslim.export``.

``parse_spec("log2:4/a16")`` turns the CLI spelling into a :class:`ParsedSpec`;
:meth:`edgeslim.plugin.quantization.config.QuantConfig.from_spec` and
:meth:`edgeslim.exporters.config.QuantSpec.parse` both call it and then decide what they offer.
Grammar (case-insensitive, blanks around the text ignored)::

    spec        := float | weights ["/" activations]
    float       := fp32 | float | none | fp16 | float16 | dynamic | dynamic-range | drq
    weights     := int8 | w8a8 | int16 | w16a16 | w8a16 | 16x8 | int16x8 | wNaM | SCHEME:BITS
    activations := aBITS | log2:BITS

``float`` spellings are export-only precisions (``dynamic``: int8 weights, float activations
quantized on the fly). ``wNaM`` is affine N-bit weights and M-bit activations; ``SCHEME:BITS``
quantizes weights with a registered scheme (``affine``, ``log2``, ``codebook``, ``pwl`` ...) and
activations to affine int8. A ``/`` suffix replaces the activation part: ``aBITS`` is affine,
``SCHEME:BITS`` a registered activation scheme (``log2:BITS``: power-of-two levels). The bits a
scheme takes are what it declares (affine 2..16, log2 activations 2..5: their exponents must fit
an int16 grid).

The schemes themselves are declared in :data:`WEIGHT_SCHEMES` and :data:`ACTIVATION_SCHEMES`
(:class:`SchemeInfo`: kind, bits, how each export format lowers them). The quantization plugin
fills them — ``edgeslim.plugin.quantization.schemes.register_scheme`` is the one place a scheme is
added — and the first lookup of an unknown name loads the ``edgeslim.plugins`` entry points, so
this parser knows every scheme without importing the plugin itself.

Canonical labels (:attr:`ParsedSpec.label`): ``fp32``, ``fp16``, ``dynamic``, ``int8``,
``int16``, ``w8a16``, ``wNaM`` (other affine pairs), ``affine:N/log2:M``, ``SCHEME:N`` (int8
activations) or ``SCHEME:N/aM`` / ``SCHEME:N/log2:M``. ``parse_spec(p.label) == p`` always.

This module imports nothing heavy (no torch): it sits under the plugins and exporters.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum

from edgeslim.errors import SpecError
from edgeslim.registry import Registry

#: Bits of weights and of affine activations.
MIN_BITS, MAX_BITS = 2, 16
#: Export-only precisions and their aliases.
EXPORT_ONLY: dict[str, str] = {
    "fp32": "fp32", "float": "fp32", "none": "fp32",
    "fp16": "fp16", "float16": "fp16",
    "dynamic": "dynamic", "dynamic-range": "dynamic", "drq": "dynamic",
}
#: Fixed affine spellings -> (weight bits, activation bits).
_AFFINE: dict[str, tuple[int, int]] = {
    "int8": (8, 8), "w8a8": (8, 8),
    "int16": (16, 16), "w16a16": (16, 16),
    "w8a16": (8, 16), "16x8": (8, 16), "int16x8": (8, 16),
}


class SchemeKind(str, Enum):
    """What a scheme's levels are.

    ``GRID``: every integer of a ``bits``-wide grid times a step (uniform affine); it lowers to the
    stock int8/int16 quantize/dequantize pair. ``CODED``: ``2^bits`` levels picked on an int8/int16
    grid (log2, codebook, pwl); the converted graph carries the grid values, exporters may ship
    N-bit codes plus a codebook. ``FLOAT``: the levels are not on an integer grid (e.g. fp8); no
    integer lowering, a format offers it only where the scheme's ``lowering`` names it.
    """

    GRID = "grid"
    CODED = "coded"
    FLOAT = "float"


class Lowering(str, Enum):
    """How an export format carries a scheme's tensors.

    ``QDQ``: standard int8/int16 quantize/dequantize pairs holding the grid values; ``CODES``:
    N-bit codes plus a per-channel codebook (a lookup before ``DequantizeLinear``); ``NONE``: the
    format does not offer the scheme.
    """

    QDQ = "qdq"
    CODES = "codes"
    NONE = "none"


#: What each kind lowers to per export format unless the scheme says otherwise. TFLite carries coded
#: weights as their exact int8 grid values (it has no N-bit codebook tensors).
DEFAULT_LOWERING: dict[SchemeKind, dict[str, Lowering]] = {
    SchemeKind.GRID: {"onnx": Lowering.QDQ, "tflite": Lowering.QDQ, "tensorrt": Lowering.QDQ, "executorch": Lowering.QDQ},
    SchemeKind.CODED: {"onnx": Lowering.CODES, "tflite": Lowering.QDQ},
    SchemeKind.FLOAT: {},
}


@dataclass(frozen=True)
class SchemeInfo:
    """What a registered quantization scheme is (declared once, where the scheme is defined).

    Attributes:
        name: The registered name (lower case), the ``SCHEME`` of ``SCHEME:BITS``.
        kind: Grid, coded or float levels (:class:`SchemeKind`).
        min_bits: Fewest bits it takes.
        max_bits: Most bits it takes.
        lowering: Export format -> :class:`Lowering` (formats not named: ``NONE``); default: the
            kind's :data:`DEFAULT_LOWERING`.
    """

    name: str
    kind: SchemeKind = SchemeKind.CODED
    min_bits: int = MIN_BITS
    max_bits: int = MAX_BITS
    lowering: Mapping[str, Lowering] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", SchemeKind(self.kind))
        if not MIN_BITS <= self.min_bits <= self.max_bits <= MAX_BITS:
            raise SpecError(f"scheme {self.name!r}: bits {self.min_bits}..{self.max_bits} must lie within "
                            f"{MIN_BITS}..{MAX_BITS}; declare a range inside it")
        merged = {**DEFAULT_LOWERING[self.kind], **{str(k).lower(): Lowering(v) for k, v in dict(self.lowering).items()}}
        object.__setattr__(self, "lowering", merged)

    def lowers_to(self, fmt: str) -> Lowering:
        """How export format ``fmt`` (``onnx``, ``tflite`` ...) carries this scheme."""
        return self.lowering.get(fmt.lower(), Lowering.NONE)

    def formats(self, lowering: Lowering) -> list[str]:
        """The export formats that carry this scheme as ``lowering``, sorted."""
        return sorted(f for f, low in self.lowering.items() if low is lowering)


#: Weight quantization schemes by name (filled by ``edgeslim.plugin.quantization.schemes``).
WEIGHT_SCHEMES: Registry[SchemeInfo] = Registry("weight quantization scheme")
#: Activation quantization schemes by name (filled by the same module).
ACTIVATION_SCHEMES: Registry[SchemeInfo] = Registry("activation quantization scheme")


def schemes_of(kind: SchemeKind, registry: Registry[SchemeInfo] = WEIGHT_SCHEMES) -> tuple[str, ...]:
    """The names of the registered schemes of ``kind``, sorted (e.g. every coded weight scheme)."""
    return tuple(n for n in registry.names() if registry.get(n).kind is kind)


def accepted() -> str:
    """The accepted spellings, for error messages (the scheme names come from the registries)."""
    weights = ", ".join(f"{n} {i.min_bits}..{i.max_bits}" for n, i in ((n, WEIGHT_SCHEMES.get(n)) for n in WEIGHT_SCHEMES.names()))
    acts = ", ".join(f"{n} {i.min_bits}..{i.max_bits}" for n, i in ((n, ACTIVATION_SCHEMES.get(n)) for n in ACTIVATION_SCHEMES.names()))
    return (
        f"fp32, fp16, dynamic (export only), int8, int16, w8a16 (16x8), wNaM, SCHEME:BITS ({weights or 'none registered'}), "
        f"each optionally followed by /aBITS or /SCHEME:BITS for the activations ({acts or 'none registered'})"
    )


@dataclass(frozen=True)
class ParsedSpec:
    """A parsed quantization spec.

    Attributes:
        weight_scheme: Weight scheme name (``affine``, ``log2`` ...); None for fp32/fp16.
        weight_bits: Bits per weight; None for fp32/fp16.
        activation_scheme: A registered activation scheme (``affine``, ``log2`` ...); None when activations stay float.
        activation_bits: Bits per activation; None when activations stay float.
        export_only: ``fp32``, ``fp16`` or ``dynamic`` for the export-only precisions, else None.
    """

    weight_scheme: str | None = None
    weight_bits: int | None = None
    activation_scheme: str | None = None
    activation_bits: int | None = None
    export_only: str | None = None

    @property
    def label(self) -> str:
        """The canonical spelling (see the module docstring); it parses back to this spec."""
        if self.export_only:
            return self.export_only
        w, a, ws, acts = self.weight_bits, self.activation_bits, self.weight_scheme, self.activation_scheme
        if ws == "affine" and acts == "affine":
            return "int8" if (w, a) == (8, 8) else "int16" if (w, a) == (16, 16) else f"w{w}a{a}"
        if acts == "affine" and a == 8:
            return f"{ws}:{w}"
        return f"{ws}:{w}/" + (f"a{a}" if acts == "affine" else f"{acts}:{a}")


def _fail(text: str, reason: str) -> SpecError:
    return SpecError(f"bad quantization spec {text!r}: {reason}; accepted: {accepted()}")


def _bits(text: str, digits: str, what: str, low: int = MIN_BITS, high: int = MAX_BITS) -> int:
    if not digits.isdigit() or not low <= int(digits) <= high:
        raise _fail(text, f"{what} take {low}..{high} bits, got " + (repr(digits) if digits else "no number"))
    return int(digits)


def _activations(text: str, part: str) -> tuple[str, int]:
    if re.fullmatch(r"a\d*", part):
        name, digits = "affine", part[1:]
    elif ":" in part:
        name, _, digits = part.partition(":")
    else:
        raise _fail(text, f"bad activation part {part!r} (use aBITS such as a8, a16, or SCHEME:BITS such as log2:5)")
    if name not in ACTIVATION_SCHEMES.names():
        raise _fail(text, f"unknown activation scheme {name!r} (known: {', '.join(ACTIVATION_SCHEMES.names())})")
    info = ACTIVATION_SCHEMES.get(name)
    what = "activations" if name == "affine" else f"{name} activations"
    return name, _bits(text, digits, what, info.min_bits, info.max_bits)


def parse_spec(text: str, *, schemes: Collection[str] | None = None) -> ParsedSpec:
    """Parse a quantization spec (grammar in the module docstring).

    Args:
        text: The spelling, e.g. ``"int8"``, ``"w4a8"``, ``"log2:4/log2:5"``, ``"codebook:4/a16"``.
        schemes: Weight scheme names accepted in ``SCHEME:BITS``, each taking ``MIN_BITS..MAX_BITS``
            (default: the registered :data:`WEIGHT_SCHEMES`, with the bits each declares).

    Returns:
        The parsed spec.

    Raises:
        SpecError: Unknown spelling, scheme, or bits out of range; the message names ``text``
            and lists the accepted spellings.
    """
    s = str(text).strip().lower()
    if s in EXPORT_ONLY:
        p = EXPORT_ONLY[s]
        return ParsedSpec("affine", 8, export_only=p) if p == "dynamic" else ParsedSpec(export_only=p)
    wpart, slash, apart = s.partition("/")
    known = tuple(schemes) if schemes is not None else tuple(WEIGHT_SCHEMES.names())
    if wpart in EXPORT_ONLY:
        raise _fail(text, f"the export-only precision {wpart!r} takes no activation part")
    if wpart in _AFFINE:
        (wbits, abits), wscheme = _AFFINE[wpart], "affine"
    elif m := re.fullmatch(r"w(\d*)a(\d*)", wpart):
        wscheme, wbits, abits = "affine", _bits(text, m[1], "weights"), _bits(text, m[2], "activations")
    elif ":" in wpart:
        wscheme, _, digits = wpart.partition(":")
        if wscheme not in known:
            raise _fail(text, f"unknown weight scheme {wscheme!r} (known: {', '.join(sorted(known))})")
        low, high = (MIN_BITS, MAX_BITS) if schemes is not None else (
            (i := WEIGHT_SCHEMES.get(wscheme)).min_bits, i.max_bits)
        wbits, abits = _bits(text, digits, f"{wscheme} weights", low, high), 8
    else:
        raise _fail(text, f"unknown weight part {wpart!r}")
    ascheme = "affine"
    if slash:
        ascheme, abits = _activations(text, apart)
    return ParsedSpec(wscheme, wbits, ascheme, abits)


__all__ = [
    "ACTIVATION_SCHEMES",
    "DEFAULT_LOWERING",
    "EXPORT_ONLY",
    "MAX_BITS",
    "MIN_BITS",
    "WEIGHT_SCHEMES",
    "Lowering",
    "ParsedSpec",
    "SchemeInfo",
    "SchemeKind",
    "SpecError",
    "accepted",
    "parse_spec",
    "schemes_of",
]
