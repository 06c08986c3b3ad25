"""Piecewise-linear ("two-segment") quantization: a dense inner range and coarser tails.

Of the ``2^b`` levels, half are spread uniformly over ``[-p, p]`` and a quarter over each
tail ``(p, m]`` (``m = max|w|``). The breakpoint ``p = r·m`` is chosen per channel by MSE
over a grid of ratios ``r``. Levels are snapped onto an integer grid (int8 up to 4 bits,
int16 above), which the converted model carries as a standard per-channel tensor.
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
    nearest_level,
    register_scheme,
    safe_max,
)
from edgeslim.spec import SchemeKind

#: Breakpoint ratios searched per channel.
RATIOS = tuple(r / 20 for r in range(2, 20))


def _unit_levels(bits: int, r: float) -> torch.Tensor:
    """Levels in units of ``m`` for breakpoint ratio ``r``, sorted, ``[2^bits]`` (or fewer for 2 bits)."""
    n = 2**bits
    inner = torch.linspace(-r, r, n // 2)
    n_tail = max(n // 4, 1)
    tail = torch.linspace(r, 1.0, n_tail + 1)[1:]
    return torch.cat([-tail.flip(0), inner, tail]).sort().values


@register_scheme("pwl", kind=SchemeKind.CODED)
class PiecewiseLinearScheme:
    """Two-segment uniform levels with an MSE-chosen breakpoint; see the module docstring."""

    def quantize(self, w: torch.Tensor, bits: int, *, per_channel: bool = True, **options: Any) -> tuple[torch.Tensor, QParams]:
        """Quantize ``w``; codes index the sorted levels."""
        wc = channels_view(w, per_channel)
        qmax = INT8_QMAX if bits <= 4 else INT16_QMAX
        m = safe_max(wc)
        step = m / qmax
        best_err = torch.full_like(m, float("inf"))
        best = torch.zeros(wc.shape[0], len(_unit_levels(bits, 0.5)))
        for r in RATIOS:
            unit = _unit_levels(bits, r)
            ints = (unit[None, :] * qmax).round().expand(wc.shape[0], -1)
            fl = ints * step[:, None]
            idx = nearest_level(wc, fl)
            err = (torch.gather(fl, 1, idx) - wc).pow(2).sum(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better[:, None], ints, best)
        return finish(w, wc, step, best, qmax, bits)

    def dequantize(self, codes: torch.Tensor, params: QParams) -> torch.Tensor:
        """Decode codes to floats."""
        return dequantize(codes, params)
