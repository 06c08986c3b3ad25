"""Per-layer codebooks: k-means inits, error, and bits chosen under a budget."""

from __future__ import annotations

import pytest
import torch

from edgeslim.deep_compression.codebook import allocate_bits, fit, lloyd, relative_error
from edgeslim.errors import ConfigError


def test_lloyd_lowers_the_error_of_its_start() -> None:
    v = torch.randn(20_000)
    start = torch.linspace(float(v.min()), float(v.max()), 8)
    before = fit(v, 3, "linear", iterations=0)
    after = fit(v, 3, "linear", iterations=30)
    assert torch.allclose(before.centroids, start)
    assert relative_error(v, after) < 0.6 * relative_error(v, before)
    assert torch.equal(after.centroids, lloyd(v, start, 30))


def test_linear_init_keeps_the_large_weights_density_init_the_common_ones() -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.cat([torch.randn(50_000, generator=g) * 0.01, torch.tensor([1.0, -1.0])])  # two outliers
    lin = fit(v, 2, "linear", iterations=0)
    dens = fit(v, 2, "density", iterations=0)
    assert lin.centroids.abs().max() == pytest.approx(1.0)
    assert dens.centroids.abs().max() < 0.1
    assert lin.codes.max() < 4 and lin.centroids.numel() == 4


def test_codes_pick_the_nearest_centroid() -> None:
    v = torch.randn(1000)
    book = fit(v, 4, "density")
    nearest = (v[:, None] - book.centroids[None]).abs().argmin(1)
    assert torch.equal(book.codes, nearest)


def test_bits_follow_the_error_per_byte_under_the_budget() -> None:
    errors = {"big_easy": {2: 0.02, 4: 0.01, 6: 0.005}, "small_hard": {2: 0.5, 4: 0.1, 6: 0.02}}
    sizes = {"big_easy": 9000, "small_hard": 1000}
    bits = allocate_bits(errors, sizes, mean_bits=2.5)
    assert sum(sizes[n] * b for n, b in bits.items()) <= 2.5 * 10_000
    assert bits == {"big_easy": 2, "small_hard": 6}
    assert allocate_bits(errors, sizes, mean_bits=6.0) == {"big_easy": 6, "small_hard": 6}
    with pytest.raises(ConfigError, match=r"mean_bits=1\.5"):
        allocate_bits(errors, sizes, mean_bits=1.5)
