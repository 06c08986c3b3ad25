"""Latency statistics on the host: recomputed from the raw latencies the agent returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeslim.config import serializable, to_data


@serializable()
@dataclass(frozen=True)
class LatencyStats:
    """Summary of one artefact's timed runs, in milliseconds."""

    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float

    def to_dict(self) -> dict[str, float | int]:
        """A plain dict (JSON-ready; :func:`edgeslim.config.to_data`, untagged)."""
        data: dict[str, float | int] = to_data(self, tagged=False)
        return data


def summarize(latencies_ms: Sequence[float]) -> LatencyStats:
    """Percentiles (linear interpolation), mean, population std, min and max.

    Raises:
        ValueError: ``latencies_ms`` is empty.
    """
    if not latencies_ms:
        raise ValueError("no latencies to summarize")
    a = np.asarray(latencies_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return LatencyStats(len(a), float(p50), float(p90), float(p99), float(a.mean()), float(a.std()),
                        float(a.min()), float(a.max()))


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference`` or None when either is missing or the reference is zero."""
    if value is None or not reference:
        return None
    return value / reference
