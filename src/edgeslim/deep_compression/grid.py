"""Codebooks on the int8 grid, so that the packed model *is* an int8 model.

:func:`snap` moves each layer's trained centroids onto ``k·step`` with integer ``|k| <= 127``
and one ``step = max|centroid| / 127`` per layer (the values are computed in float32 as
``float32(k) * step``), so every conv/linear weight of the packed model is exactly an int8
tensor times one scale. The pruned zeros are ``k = 0``.

Once BatchNorm is folded into a conv (as PT2E and every int8 runtime do), a layer's weight is
``k·step·f_c`` per output channel ``c``: still the same integers, with a per-channel scale. The
``int8-grid`` quantization scheme (:class:`Int8GridScheme`, registered here) finds that scale
for each channel instead of re-rounding the weight, so ``edgeslim.quantize`` carries the
packed integers into the converted model (and on to the ONNX/TFLite artefact) unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from edgeslim.deep_compression.codebook import Codebook
from edgeslim.plugin.quantization.schemes.base import (
    INT8_QMAX,
    QParams,
    channels_view,
    dequantize,
    finish,
    register_scheme,
)

#: A channel is on a grid when every ``w·m/max|w|`` is this close to an integer (float32 noise is ~1e-5).
GRID_TOLERANCE = 1e-3
SCHEME = "int8-grid"


def snap(book: Codebook) -> tuple[Codebook, float]:
    """``(book with its centroids on the int8 grid, the grid step)``; codes are unchanged."""
    c = book.centroids.to(torch.float32)
    top = float(c.abs().max()) if c.numel() else 0.0
    step = torch.tensor(top / INT8_QMAX if top > 0 else 1.0, dtype=torch.float32)
    ints = torch.round(c / step).clamp(-INT8_QMAX, INT8_QMAX)
    return Codebook((ints * step).contiguous(), book.codes, book.bits), float(step)


def on_grid(values: torch.Tensor, step: float) -> bool:
    """True when ``values`` are exactly ``float32(k) * step`` with integer ``|k| <= 127``."""
    s = torch.tensor(step, dtype=torch.float32)
    ints = torch.round(values.to(torch.float32) / s)
    return bool((ints.abs() <= INT8_QMAX).all()) and torch.equal(ints * s, values.to(torch.float32))


def channel_steps(wc: torch.Tensor, tolerance: float = GRID_TOLERANCE) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``wc`` ``[C, N]``: the step of the int8 grid it lies on, and whether it lies on one.

    A row lies on a grid when some ``m`` in 1..127 makes every ``w·m/max|w|`` an integer (within
    ``tolerance``); the largest such ``m`` is taken, and any such ``m`` represents the row exactly.
    Rows on no grid get ``max|w| / 127`` (plain rounding) and ``False``; all-zero rows step 1.
    """
    top = wc.abs().amax(dim=1).to(torch.float64)
    x = wc.to(torch.float64) / top.clamp_min(1e-300)[:, None]
    found = torch.zeros(wc.shape[0], dtype=torch.long)
    open_rows = torch.nonzero(top > 0).reshape(-1)
    for m in range(INT8_QMAX, 0, -1):
        if open_rows.numel() == 0:
            break
        r = x[open_rows] * m
        ok = (r - r.round()).abs().amax(dim=1) <= tolerance
        found[open_rows[ok]] = m
        open_rows = open_rows[~ok]
    exact = (found > 0) | (top == 0)
    mult = torch.where(found > 0, found, torch.full_like(found, INT8_QMAX)).to(torch.float64)
    step = torch.where(top > 0, top / mult, torch.ones_like(top))
    return step.to(torch.float32), exact


@register_scheme(SCHEME)
class Int8GridScheme:
    """Weights already on a per-channel int8 grid (e.g. an unpacked ``.esz``): found, not re-rounded.

    Each output channel gets the step of its grid and the 255 levels ``-127..127``. With the
    option ``max_code`` (per channel, the largest ``|k|`` of the packed weight: BatchNorm folding
    scales a channel but keeps its integers) the step is ``max|w_c| / max_code[c]``, so the int8
    values are the packed integers themselves; without it, the step is searched
    (:func:`channel_steps`: exact values, integers possibly scaled). A channel on no grid is
    rounded like plain int8 (the caller checks exactness, e.g. by the quantization report's SQNR).
    """

    def quantize(
        self, w: torch.Tensor, bits: int, *, per_channel: bool = True, **options: Any
    ) -> tuple[torch.Tensor, QParams]:
        """Codes and grid of ``w`` (``bits`` is 8: the grid is int8)."""
        wc = channels_view(w, per_channel)
        codes = options.get("max_code")
        if codes is not None and len(codes) == wc.shape[0]:
            top = wc.abs().amax(dim=1).to(torch.float64)
            m = torch.tensor(codes, dtype=torch.float64)
            step = torch.where((top > 0) & (m > 0), top / m.clamp_min(1), torch.ones_like(top)).to(torch.float32)
        else:
            step, _exact = channel_steps(wc)
        levels = torch.arange(-INT8_QMAX, INT8_QMAX + 1, dtype=torch.float32).expand(wc.shape[0], -1)
        return finish(w, wc, step, levels, INT8_QMAX, 8)

    def dequantize(self, codes: torch.Tensor, params: QParams) -> torch.Tensor:
        """Decode codes to floats."""
        return dequantize(codes, params)


__all__ = ["GRID_TOLERANCE", "SCHEME", "Int8GridScheme", "channel_steps", "on_grid", "snap"]
