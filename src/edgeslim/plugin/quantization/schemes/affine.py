"""Uniform affine quantization: symmetric or asymmetric, per tensor or per channel, 2–16 bits.

Weights and activations; both lower to the stock int8/int16 quantize/dequantize pairs.
"""

from __future__ import annotations

from typing import Any

import torch
from torchao.quantization.pt2e.fake_quantize import FusedMovingAvgObsFakeQuantize
from torchao.quantization.pt2e.observer import MovingAverageMinMaxObserver
from torchao.quantization.pt2e.quantizer import QuantizationSpec

from edgeslim.plugin.quantization.calibration import observer_class
from edgeslim.plugin.quantization.schemes.base import (
    QParams,
    channels_view,
    dequantize,
    register_activation_scheme,
    register_scheme,
)
from edgeslim.spec import MAX_BITS, MIN_BITS, SchemeKind


@register_activation_scheme("affine", kind=SchemeKind.GRID, bits=(MIN_BITS, MAX_BITS))
def affine_activation_qspec(spec: Any, qat: bool) -> QuantizationSpec:
    """Per-tensor affine activations: int8 up to 8 bits, int16 above; the spec's calibrator (PTQ) or EMA min/max (QAT).

    Args:
        spec: The layer's ``ActivationSpec``.
        qat: Quantization-aware training (fake-quant with moving-average observers).
    """
    dtype = torch.int8 if spec.bits <= 8 else torch.int16
    qmin, qmax = -(2 ** (spec.bits - 1)), 2 ** (spec.bits - 1) - 1
    qscheme = torch.per_tensor_symmetric if spec.symmetric else torch.per_tensor_affine
    ctr: Any
    if qat:
        ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver)
    else:
        ctr = observer_class(spec.calibrator)
    return QuantizationSpec(dtype=dtype, quant_min=qmin, quant_max=qmax, qscheme=qscheme, observer_or_fake_quant_ctr=ctr)


@register_scheme("affine", kind=SchemeKind.GRID, bits=(MIN_BITS, MAX_BITS))
class AffineScheme:
    """``q = clamp(round(w / step) + zp)``; levels are every integer of the ``bits``-wide range.

    Symmetric uses ``[-(2^(b-1)-1), 2^(b-1)-1]`` (zero point 0, what int8 kernels expect for
    weights); asymmetric uses ``[0, 2^b - 1]`` with a per-channel zero point.
    """

    def quantize(self, w: torch.Tensor, bits: int, *, per_channel: bool = True, symmetric: bool = True, **options: Any) -> tuple[torch.Tensor, QParams]:
        """Quantize ``w``; see the class docstring."""
        wc = channels_view(w, per_channel)
        if symmetric:
            qmax = 2 ** (bits - 1) - 1
            step = (wc.abs().amax(dim=1) / qmax).clamp_min(1e-12)
            zp = torch.zeros(wc.shape[0], dtype=torch.int64)
            q = torch.clamp(torch.round(wc / step[:, None]), -qmax, qmax)
            levels = torch.arange(-qmax, qmax + 1, dtype=torch.int64).expand(wc.shape[0], -1)
            codes = q + qmax
        else:
            qmax = 2**bits - 1
            lo = wc.amin(dim=1).clamp_max(0)
            hi = wc.amax(dim=1).clamp_min(0)
            step = ((hi - lo) / qmax).clamp_min(1e-12)
            zp = torch.clamp(torch.round(-lo / step), 0, qmax).to(torch.int64)
            q = torch.clamp(torch.round(wc / step[:, None]) + zp[:, None], 0, qmax)
            levels = torch.arange(0, qmax + 1, dtype=torch.int64).expand(wc.shape[0], -1)
            codes = q
        params = QParams(step.to(torch.float32), levels.contiguous(), zp, qmax, bits)
        return codes.to(torch.int64).reshape(w.shape), params

    def dequantize(self, codes: torch.Tensor, params: QParams) -> torch.Tensor:
        """Decode codes to floats."""
        return dequantize(codes, params)
