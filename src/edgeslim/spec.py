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
``log2:BITS`` power-of-two levels. Weight and affine activation bits are 2..16, log2 activation
bits 2..5 (their exponents must fit an int16 grid).

Canonical labels (:attr:`ParsedSpec.label`): ``fp32``, ``fp16``, ``dynamic``, ``int8``,
``int16``, ``w8a16``, ``wNaM`` (other affine pairs), ``affine:N/log2:M``, ``SCHEME:N`` (int8
activations) or ``SCHEME:N/aM`` / ``SCHEME:N/log2:M``. ``parse_spec(p.label) == p`` always.

This module imports nothing heavy (no torch): it is floor 2, under the plugins and exporters.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from edgeslim.errors import SpecError

#: Bits of weights and of affine activations.
MIN_BITS, MAX_BITS = 2, 16
#: Bits of log2 activations (2^b - 1 exponents plus zero must fit the int16 grid).
LOG2_ACT_MIN_BITS, LOG2_ACT_MAX_BITS = 2, 5
#: Weight schemes known without importing the registry (callers may pass their registry's names).
BUILTIN_WEIGHT_SCHEMES = ("affine", "codebook", "log2", "pwl")
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
ACCEPTED = (
    "fp32, fp16, dynamic (export only), int8, int16, w8a16 (16x8), wNaM, SCHEME:BITS "
    "(affine, log2, codebook, pwl ...), each optionally followed by /aBITS or /log2:BITS for the activations; "
    f"bits {MIN_BITS}..{MAX_BITS}, log2 activations {LOG2_ACT_MIN_BITS}..{LOG2_ACT_MAX_BITS}"
)


@dataclass(frozen=True)
class ParsedSpec:
    """A parsed quantization spec.

    Attributes:
        weight_scheme: Weight scheme name (``affine``, ``log2`` ...); None for fp32/fp16.
        weight_bits: Bits per weight; None for fp32/fp16.
        activation_scheme: ``affine`` or ``log2``; None when activations stay float.
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
    return SpecError(f"bad quantization spec {text!r}: {reason}; accepted: {ACCEPTED}")


def _bits(text: str, digits: str, what: str, low: int = MIN_BITS, high: int = MAX_BITS) -> int:
    if not digits.isdigit() or not low <= int(digits) <= high:
        raise _fail(text, f"{what} take {low}..{high} bits, got " + (repr(digits) if digits else "no number"))
    return int(digits)


def _activations(text: str, part: str) -> tuple[str, int]:
    if part.startswith("log2:"):
        return "log2", _bits(text, part[5:], "log2 activations", LOG2_ACT_MIN_BITS, LOG2_ACT_MAX_BITS)
    if re.fullmatch(r"a\d*", part):
        return "affine", _bits(text, part[1:], "activations")
    raise _fail(text, f"bad activation part {part!r} (use aBITS such as a8, a16, or log2:BITS)")


def parse_spec(text: str, *, schemes: Collection[str] | None = None) -> ParsedSpec:
    """Parse a quantization spec (grammar in the module docstring).

    Args:
        text: The spelling, e.g. ``"int8"``, ``"w4a8"``, ``"log2:4/log2:5"``, ``"codebook:4/a16"``.
        schemes: Weight scheme names accepted in ``SCHEME:BITS`` (default
            :data:`BUILTIN_WEIGHT_SCHEMES`; the quantization plugin passes its registry's names).

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
    known = tuple(schemes) if schemes is not None else BUILTIN_WEIGHT_SCHEMES
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
        wbits, abits = _bits(text, digits, f"{wscheme} weights"), 8
    else:
        raise _fail(text, f"unknown weight part {wpart!r}")
    ascheme = "affine"
    if slash:
        ascheme, abits = _activations(text, apart)
    return ParsedSpec(wscheme, wbits, ascheme, abits)


__all__ = [
    "ACCEPTED",
    "BUILTIN_WEIGHT_SCHEMES",
    "EXPORT_ONLY",
    "LOG2_ACT_MAX_BITS",
    "LOG2_ACT_MIN_BITS",
    "MAX_BITS",
    "MIN_BITS",
    "ParsedSpec",
    "SpecError",
    "parse_spec",
]
