"""Weight quantization schemes, one file each, registered by name in :data:`SCHEMES`.

Third parties add a scheme with ``@register_scheme("name")`` on a class implementing
:class:`Scheme` (``quantize(w, bits) -> (codes, QParams)`` / ``dequantize``).
"""

from edgeslim.plugin.quantization.schemes import affine, codebook, log2, pwl  # noqa: F401  (registration)
from edgeslim.plugin.quantization.schemes.base import SCHEMES, QParams, Scheme, dequantize, register_scheme, to_coded

__all__ = ["SCHEMES", "QParams", "Scheme", "dequantize", "register_scheme", "to_coded"]
