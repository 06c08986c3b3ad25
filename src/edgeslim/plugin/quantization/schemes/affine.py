"""Uniform affine quantization: symmetric or asymmetric, per tensor or per channel, 2–16 bits."""

from __future__ import annotations

from typing import Any

import torch

from edgeslim.plugin.quantization.schemes.base import QParams, channels_view, dequantize, register_scheme


@register_scheme("affine")
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
