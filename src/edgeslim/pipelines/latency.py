"""Latency measured on the target: per-layer tables (cached) and whole-model medians.

A layer is measured by exporting a one-layer model (conv+bn+relu, or linear) with
:func:`edgeslim.exporters.api.export` and timing it with :func:`edgeslim.device_bench.api.bench`
on the target, several layers per bench call. Tables are JSON files, one per
:class:`LatencyKey` (device, runtime, threads, input size, quantization), under
``$EDGESLIM_CACHE/latency`` (default ``~/.cache/edgeslim/latency``): a second search with the
same key measures nothing new. Whole models compared with references in one session (what the
joint search judges budgets on) are in :mod:`edgeslim.pipelines.latency_compare`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeslim.config import serializable, to_data
from edgeslim.device_bench.api import bench
from edgeslim.device_bench.runtimes.base import RUNTIMES
from edgeslim.errors import ConfigError, EdgeslimError
from edgeslim.exporters.api import export
from edgeslim.exporters.base import format_for_suffix

#: Format of the cached tables. 2: layers timed at their real input size (version 1 tables timed
#: one-layer files with dynamic H/W at 1x1 — edgeslim's bench now uses the recorded export shape).
TABLE_VERSION = 2

#: Calibration images of a whole-model int8 export (latency does not depend on the values).
_CALIBRATION_IMAGES = 16


class LatencyMeasurementError(EdgeslimError):
    """A layer or model could not be benchmarked on the target (the message names which)."""


@serializable()
@dataclass(frozen=True)
class LatencyKey:
    """What a latency table depends on: target, runtime, threads, model input size, precision."""

    device: str
    runtime: str
    threads: int
    input_size: tuple[int, int]
    quant: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", (int(self.input_size[0]), int(self.input_size[1])))
        if self.quant not in ("fp32", "int8"):
            raise ConfigError(f"latency tables: quant must be 'fp32' or 'int8', got {self.quant!r}")
        if self.threads < 0:
            raise ConfigError(f"latency tables: threads must be >= 0, got {self.threads}")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"latency tables: unknown runtime {self.runtime!r}; known: {RUNTIMES.names()}")

    @property
    def format(self) -> str:
        """The exporter format whose artefacts the runtime runs (``onnx``, ``tflite``)."""
        for suffix in RUNTIMES.get(self.runtime).suffixes:
            if (fmt := format_for_suffix(suffix)) is not None:
                return fmt
        raise ConfigError(f"latency tables: runtime {self.runtime!r} runs no format edgeslim exports")

    def file_name(self) -> str:
        """A file-system-safe name for this key's table."""
        raw = f"{self.device}_{self.runtime}_t{self.threads}_{self.input_size[0]}x{self.input_size[1]}_{self.quant}"
        return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-") + ".json"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (:func:`edgeslim.config.to_data`, untagged)."""
        data: dict[str, Any] = to_data(self, tagged=False)
        return data


@dataclass(frozen=True)
class LayerGeometry:
    """The shape of one layer as the table keys it (``kind`` is ``conv`` or ``linear``).

    ``h``/``w`` are the layer's input height and width (1 for linear layers).
    """

    kind: str
    cin: int
    cout: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    h: int = 1
    w: int = 1

    def key(self) -> str:
        """The table entry name, e.g. ``conv:64x128:k3x3:s2x2:p1x1:g1:56x56``."""
        k, s, p = self.kernel, self.stride, self.padding
        return (f"{self.kind}:{self.cin}x{self.cout}:k{k[0]}x{k[1]}:s{s[0]}x{s[1]}:p{p[0]}x{p[1]}:g{self.groups}:"
                f"{self.h}x{self.w}")

    def module(self) -> nn.Module:
        """The one-layer model measured for this entry (input flattened: see :class:`_Flat`)."""
        if self.kind == "linear":
            return nn.Linear(self.cin, self.cout)
        if self.kind != "conv":
            raise ConfigError(f"latency tables: unknown layer kind {self.kind!r} (conv or linear)")
        body = nn.Sequential(
            nn.Conv2d(self.cin, self.cout, self.kernel, self.stride, self.padding, groups=self.groups, bias=False),
            nn.BatchNorm2d(self.cout), nn.ReLU())
        return _Flat(body, (self.cin, self.h, self.w))

    def example(self) -> torch.Tensor:
        """One example input of :meth:`module` (batch 1)."""
        return torch.randn(1, self.cin * self.h * self.w)


class _Flat(nn.Module):
    """Takes ``(N, C*H*W)`` and reshapes to NCHW: only the batch dimension stays dynamic in the
    exported file, so the bench's default input (dynamic dimensions read as 1) has the real size."""

    def __init__(self, body: nn.Module, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.body = body
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(-1, *self.shape))


def fingerprint(model: nn.Module, channels: int = 3) -> str:
    """A hash of ``model``'s structure: modules and their settings, tensor shapes, input channels (not values)."""
    parts = [str(channels)]
    parts += [f"{n}:{type(m).__name__}({m.extra_repr()})" for n, m in model.named_modules()]
    parts += [f"{n}:{tuple(t.shape)}" for n, t in model.state_dict().items()]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where tables live: ``cache_dir``, else ``$EDGESLIM_CACHE/latency``, else ``~/.cache/edgeslim/latency``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("EDGESLIM_CACHE")
    return Path(env) / "latency" if env else Path.home() / ".cache" / "edgeslim" / "latency"


class LatencyMeter:
    """Measures layers (cached per key) and whole models on one target; counts device measurements.

    Args:
        key: Target, runtime, threads, input size and precision.
        cache_dir: Folder of the tables (see :func:`cache_root`).
        runs: Timed runs per artefact and round (the median is kept).
        warmup: Untimed runs per artefact.
        model_rounds: Whole models are benchmarked in this many rounds over all the artefacts of
            one call (interleaved: a load burst from other processes hits every model alike),
            the median over all rounds' runs kept. Layers are benchmarked in one round.

    Attributes:
        measurements: Artefacts benchmarked on the device so far (layers and whole models).
        table: ``{LayerGeometry.key(): median ms}`` for this key, loaded from and saved to disk.
        compared: Whole models timed against references in one bench call
            (:class:`edgeslim.pipelines.latency_compare.Comparison`), saved with the table: each
            entry holds the models' medians together with the references' from the same call.
    """

    def __init__(self, key: LatencyKey, cache_dir: str | os.PathLike[str] | None = None, *, runs: int = 20,
                 warmup: int = 3, model_rounds: int = 3) -> None:
        if runs < 1 or warmup < 0 or model_rounds < 1:
            raise ConfigError(f"latency: runs and model_rounds must be >= 1, warmup >= 0 (got {runs}, "
                              f"{model_rounds}, {warmup})")
        self.model_rounds = model_rounds
        self.key = key
        self.runs = runs
        self.warmup = warmup
        self.path = cache_root(cache_dir) / key.file_name()
        self.measurements = 0
        self.table: dict[str, float] = {}
        self.compared: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            data = json.loads(self.path.read_text())
            if data.get("version") != TABLE_VERSION:
                data = {"key": key.to_dict(), "entries": {}}  # an older table format: measured again
            if data.get("key") != key.to_dict():
                raise LatencyMeasurementError(f"latency table {self.path} belongs to {data.get('key')}, not "
                                              f"{key.to_dict()}: delete it or use another cache_dir")
            self.table = {k: float(v) for k, v in data["entries"].items()}
            self.compared = dict(data.get("compared", {}))

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"version": TABLE_VERSION, "key": self.key.to_dict(), "entries": self.table,
                              "compared": self.compared}, indent=1, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(payload)
        os.replace(tmp, self.path)

    def missing(self, layers: Sequence[LayerGeometry]) -> list[LayerGeometry]:
        """The distinct layers of ``layers`` that have no entry yet."""
        return list(dict.fromkeys(g for g in layers if g.key() not in self.table))

    def layers(self, layers: Sequence[LayerGeometry]) -> dict[str, float]:
        """Median ms of each layer: cached entries, the missing ones measured in one bench call.

        Returns:
            ``{geometry key: ms}`` for every layer of ``layers``.
        """
        todo = self.missing(layers)
        if todo:
            with tempfile.TemporaryDirectory(prefix="edgeslim-latency-") as tmp:
                paths = [self._export(g.module().eval(), g.example(), Path(tmp) / f"layer{i}", [g.example()])
                         for i, g in enumerate(todo)]
                times = self._bench(paths, None, rounds=1)
            self.table.update({g.key(): t for g, t in zip(todo, times, strict=True)})
            self._save()
        return {g.key(): self.table[g.key()] for g in layers}

    def models(self, models: Sequence[nn.Module], channels: int = 3) -> list[float]:
        """Median ms of each whole model at the key's input size (exported at the key's precision).

        Entries are cached under the model's :func:`fingerprint` (architecture and tensor
        shapes; latency does not depend on the values). int8 exports are calibrated on a few
        real Fashion-MNIST images (the exporter's default data, cut to 16 images): enough for
        latency, not for accuracy.
        """
        keys = [f"model:{fingerprint(m, channels)}" for m in models]
        todo = {k: m for k, m in zip(keys, models, strict=True) if k not in self.table}
        if todo:
            h, w = self.key.input_size
            x = torch.randn(1, channels, h, w)
            with tempfile.TemporaryDirectory(prefix="edgeslim-latency-") as tmp:
                npz = Path(tmp) / "inputs.npz"
                np.savez(npz, x=x.numpy())
                paths = [self._export(m, x, Path(tmp) / f"model{i}", None) for i, m in enumerate(todo.values())]
                self.table.update(zip(todo, self._bench(paths, npz, rounds=self.model_rounds), strict=True))
            self._save()
        return [self.table[k] for k in keys]

    def save(self) -> None:
        """Write the table (layer entries and :attr:`compared`) to :attr:`path`."""
        self._save()

    def export_model(self, model: nn.Module, x: torch.Tensor, stem: Path, quant: str | None = None) -> Path:
        """Export a whole model for timing at ``x``'s shape (``quant``: default the key's precision).

        int8 files are calibrated on 16 real images (the exporter's default data): enough for
        latency, never for accuracy.
        """
        return self._export(model, x, stem, None, quant)

    def _export(self, model: nn.Module, x: torch.Tensor, stem: Path, calibration: list[torch.Tensor] | None,
                quant: str | None = None) -> Path:
        dest = stem.with_suffix(f".{self.key.format}")
        extra: dict[str, Any] = {"calibration_size": _CALIBRATION_IMAGES} if calibration is None else {}
        export(model, self.key.format, dest, x, quant=quant or self.key.quant, verify=False, calibration=calibration,
               overwrite=True, **extra)
        return dest

    def bench_once(self, paths: Sequence[Path], inputs: Path | None) -> list[list[float]]:
        """One bench session over ``paths`` in order (a path may repeat): each entry's timed runs (ms).

        Raises:
            LatencyMeasurementError: An entry gave no median (the message names the file).
        """
        report = bench(list(paths), self.key.device, runs=self.runs, warmup=self.warmup, threads=self.key.threads,
                       runtime=self.key.runtime, inputs=inputs)
        out = []
        for path, res in zip(paths, report.results, strict=True):
            if res.p50 is None:
                raise LatencyMeasurementError(f"latency: bench of {path.name} on {report.target} gave no median "
                                              f"({res.error}); check the target with `edgeslim bench`")
            out.append([float(v) for v in res.data.get("latencies_ms") or [res.p50]])
        return out

    def _bench(self, paths: list[Path], inputs: Path | None, rounds: int) -> list[float]:
        runs: list[list[float]] = [[] for _ in paths]
        for _ in range(rounds):
            for got, times in zip(runs, self.bench_once(paths, inputs), strict=True):
                got.extend(times)
        self.measurements += len(paths)
        return [statistics.median(got) for got in runs]


def measure_model(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    device: str = "local",
    runtime: str = "onnxruntime",
    threads: int = 2,
    quant: str = "int8",
    input_size: tuple[int, int] = (224, 224),
    runs: int = 20,
    warmup: int = 3,
    meter: LatencyMeter | None = None,
) -> float:
    """Median latency (ms) of ``model`` exported whole and benchmarked on ``device``.

    An int8 export is calibrated on 16 real images (the exporter's default data): enough for a
    latency figure, since latency does not depend on the weight or scale values, but not for
    accuracy — never use the artefact for accuracy.

    Args:
        model: An eager model (float, pruned).
        example_inputs: An input of the model; only its channel count is used.
        device: ``"local"``, ``"ssh://user@host:port"`` or a devices-file name.
        runtime: Bench runtime (``onnxruntime``, ``ai-edge-litert``).
        threads: Runtime threads.
        quant: ``"fp32"`` or ``"int8"``.
        input_size: Height and width measured.
        runs: Timed runs.
        warmup: Untimed runs.
        meter: Count the measurement on this meter (its key must match the arguments).

    Returns:
        The median latency in milliseconds.
    """
    key = LatencyKey(device, runtime, threads, input_size, quant)
    if meter is not None and meter.key != key:
        raise ConfigError(f"measure_model: the meter measures {meter.key}, not {key}")
    meter = meter or LatencyMeter(key, runs=runs, warmup=warmup)
    x = example_inputs[0] if isinstance(example_inputs, tuple) else example_inputs
    return meter.models([model], channels=int(x.shape[1]))[0]
