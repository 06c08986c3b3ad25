"""Codebooks snapped onto the int8 grid, and the ``int8-grid`` scheme that finds the grid again after BN folding."""

from __future__ import annotations

import pytest
import torch

from edgeslim.deep_compression.codebook import Codebook, fit
from edgeslim.deep_compression.grid import Int8GridScheme, channel_steps, on_grid, snap


def test_snap_puts_centroids_on_one_int8_grid_and_keeps_the_codes() -> None:
    torch.manual_seed(0)
    values = torch.randn(2000) * 0.05
    book = fit(values, 4, "linear")
    snapped, step = snap(book)
    assert torch.equal(snapped.codes, book.codes) and snapped.bits == 4
    ints = torch.round(snapped.centroids / step)
    assert torch.equal(ints * torch.tensor(step, dtype=torch.float32), snapped.centroids)
    assert float(ints.abs().max()) == 127.0
    assert on_grid(snapped.centroids, step) and not on_grid(book.centroids, step)
    assert float((snapped.centroids - book.centroids).abs().max()) <= step / 2 + 1e-9
    assert step == pytest.approx(float(book.centroids.abs().max()) / 127, rel=1e-6)


def test_snap_of_an_empty_layer_is_harmless() -> None:
    book = Codebook(torch.zeros(8), torch.zeros(0, dtype=torch.long), 3)
    snapped, step = snap(book)
    assert step == 1.0 and torch.equal(snapped.centroids, torch.zeros(8))


def _folded(ints: torch.Tensor, step: float, factors: torch.Tensor) -> torch.Tensor:
    """What BN folding makes of ``ints·step``: every output channel scaled by its factor (in float32)."""
    w = ints.to(torch.float32) * torch.tensor(step, dtype=torch.float32)
    return w * factors.reshape(-1, *([1] * (w.dim() - 1)))


def test_channel_steps_find_the_grid_of_folded_channels_and_refuse_the_rest() -> None:
    g = torch.Generator().manual_seed(1)
    ints = torch.randint(-127, 128, (6, 40), generator=g)
    ints[2] = 0  # an all-zero (pruned) channel
    factors = torch.tensor([0.3, -1.7, 2.0, 0.01, 5.0, -0.2])
    w = _folded(ints, 0.0123, factors)
    noise = torch.randn(2, 40, generator=g)
    step, exact = channel_steps(torch.cat([w, noise]))
    assert exact.tolist() == [True] * 6 + [False, False]
    for c in (0, 1, 3, 4, 5):
        assert torch.allclose(w[c] / step[c], (w[c] / step[c]).round(), atol=1e-3)
        assert torch.allclose((w[c] / step[c]).round() * step[c], w[c], rtol=1e-6, atol=0)


def test_scheme_with_max_code_returns_the_packed_integers_of_a_folded_weight() -> None:
    g = torch.Generator().manual_seed(2)
    ints = torch.randint(-60, 61, (8, 3, 3, 3), generator=g)
    ints[0, 0, 0, 0] = 127
    factors = torch.rand(8, generator=g) * 3 - 1.5
    w = _folded(ints, 0.004, factors)
    top = ints.reshape(8, -1).abs().amax(dim=1)
    codes, params = Int8GridScheme().quantize(w, 8, max_code=tuple(int(v) for v in top))
    got = torch.gather(params.levels, 1, codes.reshape(8, -1).long()).reshape(ints.shape)
    signs = torch.sign(factors).to(torch.long).reshape(-1, 1, 1, 1)
    assert torch.equal(got, ints * signs)
    assert torch.allclose(Int8GridScheme().dequantize(codes, params), w, rtol=1e-6, atol=1e-9)
    assert params.qmax == 127 and params.levels.shape == (8, 255)
