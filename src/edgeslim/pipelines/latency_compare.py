"""Whole models timed against reference models in one bench session, in interleaved rounds.

On a loaded machine one model's latency varies by 2-3x from one bench call to the next (other
processes come and go); the ratio to a reference timed in the same session, round by round,
varies far less. :class:`Comparison` times ``[refs, models] * rounds + [refs]`` in one
:func:`edgeslim.device_bench.api.bench` call (``runs`` timed runs per entry), keeps the median
of each entry's per-round medians, and caches the result only together with the references'
medians of the same session (in the meter's table, :attr:`LatencyMeter.compared`).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeslim.config import from_data, serializable, to_data
from edgeslim.errors import ConfigError
from edgeslim.pipelines.latency import LatencyMeter, fingerprint


@serializable()
@dataclass(frozen=True)
class Timing:
    """One model's latency from one interleaved session with the references.

    Attributes:
        ms: Median over the rounds of the model's per-round median latency.
        references: ``{label: median ms}`` of every reference in the same session.
        rounds: Rounds the model was timed in.
        per_round: The model's per-round medians (ms).
    """

    ms: float
    references: dict[str, float]
    rounds: int
    per_round: tuple[float, ...] = field(default=())

    def speedup(self, label: str) -> float:
        """``median(reference) / median(model)`` of the same session (the reference named ``label``)."""
        return self.references[label] / self.ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (:func:`edgeslim.config.to_data`, untagged)."""
        data: dict[str, Any] = to_data(self, tagged=False)
        return data

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Timing:
        """The inverse of :meth:`to_dict`."""
        return from_data(dict(d), cls)


class Comparison:
    """Times whole models on ``meter``'s target against fixed reference models, in one session per call.

    Args:
        meter: Target, runtime, threads, input size, precision of the models, runs per entry.
        references: ``{label: (model, quant)}``: e.g. ``{"int8": (unpruned, "int8"), "fp32":
            (unpruned, "fp32")}``; exported once (lazily) and re-timed in every session.
        channels: Input channels of the models.

    Attributes:
        sessions: Bench sessions run (cache hits excluded).
    """

    def __init__(self, meter: LatencyMeter, references: Mapping[str, tuple[nn.Module, str]], channels: int = 3) -> None:
        if not references:
            raise ConfigError("Comparison: at least one reference model is needed")
        for label, (_, quant) in references.items():
            if quant not in ("fp32", "int8"):
                raise ConfigError(f"Comparison: reference {label!r} has precision {quant!r}; use 'fp32' or 'int8'")
        self.meter, self.channels = meter, channels
        self.references = dict(references)
        self._ids = {label: f"{fingerprint(m, channels)}:{q}" for label, (m, q) in self.references.items()}
        self._refs_key = "|".join(f"{label}={self._ids[label]}" for label in sorted(self._ids))
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._ref_paths: dict[str, Path] = {}
        self.sessions = 0

    def close(self) -> None:
        """Remove the exported reference files."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp, self._ref_paths = None, {}

    def __enter__(self) -> Comparison:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="edgeslim-compare-")
        return Path(self._tmp.name)

    def _example(self) -> torch.Tensor:
        return torch.randn(1, self.channels, *self.meter.key.input_size)

    def _inputs(self) -> Path:
        npz = self._dir() / "inputs.npz"
        if not npz.is_file():
            np.savez(npz, x=self._example().numpy())
        return npz

    def _refs(self) -> dict[str, Path]:
        for label, (model, quant) in self.references.items():
            if label not in self._ref_paths:
                self._ref_paths[label] = self.meter.export_model(model, self._example(), self._dir() / f"ref-{label}",
                                                                 quant)
        return self._ref_paths

    def time(self, models: Sequence[nn.Module], rounds: int = 3) -> list[Timing]:
        """Each model's :class:`Timing` from one session ``[refs, models] * rounds + [refs]``.

        A model with the architecture of a reference at the meter's precision is not exported
        again: it takes that reference's readings (its speed-up over itself is exactly 1).
        A session already in the meter's cache (same models, references, rounds and runs) is
        not run again.

        Raises:
            ConfigError: ``rounds`` < 1.
            LatencyMeasurementError: The bench gave no median for an entry.
        """
        if rounds < 1:
            raise ConfigError(f"Comparison.time: rounds must be >= 1, got {rounds}")
        ids = [f"{fingerprint(m, self.channels)}:{self.meter.key.quant}" for m in models]
        key = f"{'+'.join(sorted(set(ids)))}@{self._refs_key}#{rounds}x{self.meter.runs}"
        hit = self.meter.compared.get(key)
        if hit is None:
            hit = self._session(dict(zip(ids, models, strict=True)), rounds)
            self.meter.compared[key] = hit
            self.meter.save()
        return [Timing.from_dict(hit[i]) for i in ids]

    def _session(self, models: dict[str, nn.Module], rounds: int) -> dict[str, dict[str, Any]]:
        alias = {i: label for i in models for label, ref in self._ids.items() if ref == i}
        refs = self._refs()
        own: dict[str, Path] = {}
        with tempfile.TemporaryDirectory(prefix="edgeslim-compare-", dir=self._dir()) as tmp:
            for n, (i, m) in enumerate(models.items()):
                if i not in alias:
                    own[i] = self.meter.export_model(m, self._example(), Path(tmp) / f"model{n}")
            entries = [*refs.items(), *own.items()]
            order = [*(entries * rounds), *refs.items()]
            times = self.meter.bench_once([p for _, p in order], self._inputs())
        per_round: dict[str, list[float]] = {}
        for (name, _), runs in zip(order, times, strict=True):
            per_round.setdefault(name, []).append(statistics.median(runs))
        self.meter.measurements += len(entries)
        self.sessions += 1
        ref_ms = {label: statistics.median(per_round[label]) for label in refs}
        out = {}
        for i in models:
            got = per_round[alias.get(i, i)]
            out[i] = Timing(statistics.median(got), ref_ms, len(got), tuple(got)).to_dict()
        return out
