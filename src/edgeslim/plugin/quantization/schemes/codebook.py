"""Codebook (non-uniform, k-means) quantization: ``2^b`` centroids per channel or per tensor.

Centroids are found by 1-D Lloyd iterations started at quantiles, then snapped onto an
integer grid of step ``max|w| / qmax`` (int8 up to 5 bits, int16 above) — 16x finer than a
4-bit codebook, so snapping costs almost nothing and the converted model runs the weight as
a standard int8 per-channel tensor whose values are exactly the centroids.
"""

from __future__ import annotations

from typing import Any

import torch

from edgeslim.plugin.quantization.schemes.base import (
    INT8_QMAX,
    INT16_QMAX,
    QParams,
    channels_view,
    dequantize,
    finish,
    register_scheme,
    safe_max,
)
from edgeslim.spec import SchemeKind

#: Lloyd iterations of the 1-D k-means.
ITERATIONS = 20


def kmeans_1d(x: torch.Tensor, k: int, iterations: int = ITERATIONS) -> torch.Tensor:
    """Row-wise 1-D k-means of ``x`` ``[C, N]`` with ``k`` centroids; returns sorted ``[C, k]``.

    Rows are sorted once; each Lloyd step then finds the cluster boundaries by binary search
    and the cluster sums from a cumulative sum, so an iteration costs ``O(C·k·log N)``.
    """
    xs = x.sort(dim=1).values.to(torch.float64)
    c, n = xs.shape
    csum = torch.cat([torch.zeros(c, 1, dtype=xs.dtype), xs.cumsum(dim=1)], dim=1)
    if n <= k:  # as many levels as values: exact
        return torch.cat([xs, xs[:, -1:].expand(c, k - n)], dim=1).to(x.dtype)
    pos = ((torch.arange(k, dtype=torch.float64) + 0.5) * n / k).floor().long().clamp(0, n - 1)  # distinct quantiles
    cent = xs[:, pos]
    for _ in range(iterations):
        mids = ((cent[:, 1:] + cent[:, :-1]) / 2).contiguous()
        b = torch.searchsorted(xs.contiguous(), mids)  # [C, k-1] boundaries
        zeros = torch.zeros(c, 1, dtype=torch.long)
        full = torch.full((c, 1), n, dtype=torch.long)
        lo, hi = torch.cat([zeros, b], dim=1), torch.cat([b, full], dim=1)
        counts = (hi - lo).to(xs.dtype)
        sums = torch.gather(csum, 1, hi) - torch.gather(csum, 1, lo)
        cent = torch.where(counts > 0, sums / counts.clamp_min(1), cent).sort(dim=1).values
    return cent.to(x.dtype)


@register_scheme("codebook", kind=SchemeKind.CODED)
class CodebookScheme:
    """k-means levels snapped onto an integer grid; see the module docstring."""

    def quantize(self, w: torch.Tensor, bits: int, *, per_channel: bool = True, **options: Any) -> tuple[torch.Tensor, QParams]:
        """Quantize ``w`` to ``2^bits`` k-means centroids."""
        wc = channels_view(w, per_channel)
        qmax = INT8_QMAX if bits <= 5 else INT16_QMAX
        step = safe_max(wc) / qmax
        k = 2**bits
        cent = kmeans_1d(wc, k)
        return finish(w, wc, step, cent / step[:, None], qmax, bits)

    def dequantize(self, codes: torch.Tensor, params: QParams) -> torch.Tensor:
        """Decode codes to floats."""
        return dequantize(codes, params)
