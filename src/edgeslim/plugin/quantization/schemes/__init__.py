"""Quantization schemes, one file each: weights in :data:`SCHEMES`, activations in :data:`ACTIVATION_QSPECS`.

Third parties add a weight scheme with ``@register_scheme("name", kind=..., bits=(lo, hi))`` on a
class implementing :class:`Scheme` (``quantize(w, bits) -> (codes, QParams)`` / ``dequantize``),
an activation scheme with ``@register_activation_scheme``; that one call also declares what the
scheme is (:class:`~edgeslim.spec.SchemeInfo`) for the spec parser, saved files and exporters.
"""

from edgeslim.plugin.quantization.schemes import affine, codebook, log2, pwl  # noqa: F401  (registration)
from edgeslim.plugin.quantization.schemes.base import (
    ACTIVATION_QSPECS,
    SCHEMES,
    QParams,
    Scheme,
    dequantize,
    register_activation_scheme,
    register_scheme,
    to_coded,
)
from edgeslim.spec import ACTIVATION_SCHEMES, WEIGHT_SCHEMES, Lowering, SchemeInfo, SchemeKind

__all__ = [
    "ACTIVATION_QSPECS",
    "ACTIVATION_SCHEMES",
    "SCHEMES",
    "WEIGHT_SCHEMES",
    "Lowering",
    "QParams",
    "Scheme",
    "SchemeInfo",
    "SchemeKind",
    "dequantize",
    "register_activation_scheme",
    "register_scheme",
    "to_coded",
]
