"""Shared-weight codebooks of the stored (non-zero) weights of a layer, and the bits per layer.

One codebook per layer (``2**bits`` float32 centroids), found by 1-D k-means started either
linearly between the extreme weights (Han et al.) or at the weights' quantiles (density: the
start used by the ``codebook`` quantization scheme, :func:`kmeans_1d`). Widths per layer are
chosen under a mean-bits budget, lowering first the layer whose error grows least per byte saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from edgeslim.deep_compression.config import Init
from edgeslim.errors import ConfigError
from edgeslim.plugin.quantization.schemes.base import nearest_level
from edgeslim.plugin.quantization.schemes.codebook import kmeans_1d


@dataclass(frozen=True)
class Codebook:
    """A layer's codebook and the code of each stored weight.

    Attributes:
        centroids: Sorted float32 centroids ``[2**bits]``.
        codes: Index of each stored weight's centroid (flat order of the non-zeros).
        bits: Code width.
    """

    centroids: torch.Tensor
    codes: torch.Tensor
    bits: int

    def values(self) -> torch.Tensor:
        """The stored weights as the codebook represents them."""
        return self.centroids[self.codes]


def lloyd(x: torch.Tensor, init: torch.Tensor, iterations: int) -> torch.Tensor:
    """1-D k-means of the values ``x`` from the centroids ``init``; returns sorted centroids.

    An empty cluster keeps its centroid.
    """
    xs = x.detach().reshape(-1).to(torch.float64).sort().values
    cent = init.to(torch.float64).sort().values
    csum = torch.cat([torch.zeros(1, dtype=xs.dtype), xs.cumsum(0)])
    n = xs.numel()
    for _ in range(iterations):
        bounds = torch.searchsorted(xs, ((cent[1:] + cent[:-1]) / 2).contiguous())
        lo = torch.cat([torch.zeros(1, dtype=torch.long), bounds])
        hi = torch.cat([bounds, torch.full((1,), n, dtype=torch.long)])
        counts = (hi - lo).to(xs.dtype)
        sums = csum[hi] - csum[lo]
        cent = torch.where(counts > 0, sums / counts.clamp_min(1), cent).sort().values
    return cent.to(torch.float32)


def fit(values: torch.Tensor, bits: int, init: Init | str = Init.LINEAR, iterations: int = 30) -> Codebook:
    """The k-means codebook of ``values`` (the non-zero weights of one layer) with ``2**bits`` centroids."""
    v = values.detach().reshape(-1).to(torch.float32)
    k = 1 << bits
    if v.numel() == 0:
        return Codebook(torch.zeros(k), torch.zeros(0, dtype=torch.long), bits)
    if Init(init) is Init.LINEAR:
        start = torch.linspace(float(v.min()), float(v.max()), k)
        cent = lloyd(v, start, iterations)
    else:
        cent = kmeans_1d(v[None], k, iterations)[0].to(torch.float32)
    codes = nearest_level(v[None], cent[None])[0]
    return Codebook(cent.contiguous(), codes.long(), bits)


def relative_error(values: torch.Tensor, book: Codebook) -> float:
    """``‖w − q(w)‖² / ‖w‖²`` of a layer's stored weights."""
    v = values.detach().reshape(-1).to(torch.float64)
    energy = float((v * v).sum())
    return float(((v - book.values().to(torch.float64)) ** 2).sum()) / energy if energy > 0 else 0.0


def allocate_bits(errors: dict[str, dict[int, float]], sizes: dict[str, int], mean_bits: float) -> dict[str, int]:
    """Bits per layer with ``Σ nₗ·bₗ ≤ mean_bits · Σ nₗ`` and the least summed relative error.

    Starts every layer at its widest width and narrows, one step at a time, the layer whose
    error grows least per bit saved, until the budget holds.

    Args:
        errors: Layer -> width -> relative error (:func:`relative_error`).
        sizes: Layer -> number of stored weights.
        mean_bits: The budget in mean bits per stored weight.

    Raises:
        ConfigError: Even the narrowest widths exceed the budget.
    """
    widths = {name: sorted(errs) for name, errs in errors.items()}
    choice = {name: ws[-1] for name, ws in widths.items()}
    total = sum(sizes.values())
    budget = mean_bits * total
    if sum(sizes[n] * min(ws) for n, ws in widths.items()) > budget + 1e-9:
        raise ConfigError(f"mean_bits={mean_bits} is below the narrowest widths allowed")
    while sum(sizes[n] * b for n, b in choice.items()) > budget + 1e-9:
        best, best_cost = None, float("inf")
        for name, b in choice.items():
            ws = widths[name]
            i = ws.index(b)
            if i == 0 or sizes[name] == 0:
                continue
            nb = ws[i - 1]
            cost = (errors[name][nb] - errors[name][b]) / (sizes[name] * (b - nb))
            if cost < best_cost:
                best, best_cost = name, cost
        if best is None:
            break
        choice[best] = widths[best][widths[best].index(choice[best]) - 1]
    return choice


def fit_layers(
    stored: dict[str, torch.Tensor],
    widths: Sequence[int],
    mean_bits: float,
    init: Init | str,
    iterations: int,
) -> tuple[dict[str, Codebook], dict[str, dict[int, float]]]:
    """Codebooks of every layer at the widths :func:`allocate_bits` chooses, with the error table."""
    errors: dict[str, dict[int, float]] = {}
    books: dict[str, dict[int, Codebook]] = {}
    for name, v in stored.items():
        books[name] = {b: fit(v, b, init, iterations) for b in widths}
        errors[name] = {b: relative_error(v, book) for b, book in books[name].items()}
    choice = allocate_bits(errors, {n: v.numel() for n, v in stored.items()}, mean_bits)
    return {n: books[n][b] for n, b in choice.items()}, errors


__all__ = ["Codebook", "allocate_bits", "fit", "fit_layers", "lloyd", "relative_error"]
