"""Logarithmic (power-of-two) quantization: ``w ≈ sign · step · base^k`` or 0.

With ``b`` bits there is a sign, and ``2^(b-1) - 1`` exponents plus zero for the magnitude.
Per output channel, the largest level ``s`` is chosen by an MSE search near ``max|w|``; the
levels are ``±s·2^k`` for ``k ∈ [kmin, 0]`` — on an integer grid of step ``s·2^kmin`` they are
``±2^(k-kmin)``, so 4-bit log2 weights (``kmin = -6``) are exactly representable in int8 and
run on int8 kernels. Base ``sqrt2`` (``options={"base": "sqrt2"}``) halves the ratio between
levels; its levels are rounded onto an int16 grid.

Activations: ``log2:BITS`` (2..5 bits), see :mod:`edgeslim.plugin.quantization.log_act`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchao.quantization.pt2e.quantizer import QuantizationSpec

from edgeslim.plugin.quantization.log_act import LOG2_ACT_MAX_BITS, LOG2_ACT_MIN_BITS, Log2ActFakeQuantize
from edgeslim.plugin.quantization.schemes.base import (
    INT16_QMAX,
    QParams,
    channels_view,
    dequantize,
    finish,
    grid_qmax,
    nearest_level,
    register_activation_scheme,
    register_scheme,
    safe_max,
)
from edgeslim.spec import SchemeKind

#: At most this many exponents (keeps every level on an int16 grid).
MAX_EXPONENTS = 15
#: Candidate top levels relative to max|w|, searched per channel for the lowest MSE.
_TOP_FRACTIONS = (1.0, 0.9, 0.8, 0.75, 0.7, 0.65, 0.6)


def _int_magnitudes(bits: int, base: str) -> tuple[torch.Tensor, int]:
    n_exp = min(2 ** (bits - 1) - 1, MAX_EXPONENTS)
    if base == "2":
        mags = torch.tensor([2.0**j for j in range(n_exp)])
        return mags, grid_qmax(int(mags.max()))
    scale = INT16_QMAX / 1.0
    mags = torch.tensor([scale * math.sqrt(2.0) ** (-j) for j in range(n_exp)]).round().clamp_min(1)
    return mags, INT16_QMAX


@register_activation_scheme("log2", kind=SchemeKind.CODED, bits=(LOG2_ACT_MIN_BITS, LOG2_ACT_MAX_BITS),
                            lowering={"onnx": "qdq", "tflite": "none"})
def log2_activation_qspec(spec: Any, qat: bool) -> QuantizationSpec:
    """Log2 activations: the log-domain fake-quant on an int16 per-tensor grid (snapped at convert).

    TFLite has no kernel for the snap op, hence no TFLite lowering.

    Args:
        spec: The layer's ``ActivationSpec``.
        qat: Quantization-aware training (straight-through gradient).
    """
    ctr = Log2ActFakeQuantize.with_args(bits=spec.bits, qat=qat)
    return QuantizationSpec(dtype=torch.int16, quant_min=-32767, quant_max=32767,
                            qscheme=torch.per_tensor_symmetric, observer_or_fake_quant_ctr=ctr)


@register_scheme("log2", kind=SchemeKind.CODED)
class Log2Scheme:
    """Sign + exponent levels; see the module docstring."""

    def quantize(self, w: torch.Tensor, bits: int, *, per_channel: bool = True, base: str = "2", **options: Any) -> tuple[torch.Tensor, QParams]:
        """Quantize ``w`` to power-of-``base`` levels (codes index the sorted levels)."""
        wc = channels_view(w, per_channel)
        mags, qmax = _int_magnitudes(bits, str(base))
        int_levels = torch.cat([-mags.flip(0), torch.zeros(1), mags])  # [K]
        top = mags.max()
        m = safe_max(wc)
        best_err = torch.full_like(m, float("inf"))
        best_step = m / top
        for frac in _TOP_FRACTIONS:
            step = m * frac / top
            fl = int_levels[None, :] * step[:, None]
            idx = nearest_level(wc, fl)
            err = (torch.gather(fl, 1, idx) - wc).pow(2).sum(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_step = torch.where(better, step, best_step)
        return finish(w, wc, best_step, int_levels.expand(wc.shape[0], -1), qmax, bits)

    def dequantize(self, codes: torch.Tensor, params: QParams) -> torch.Tensor:
        """Decode codes to floats."""
        return dequantize(codes, params)
