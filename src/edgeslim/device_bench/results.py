"""Bench results: one record per artefact, appended to a JSON-lines file as each finishes."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeslim.device_bench.stats import ratio

#: Serialises appends from the threads of a fleet bench (one line per write, never interleaved).
_APPEND_LOCK = threading.Lock()

#: Keys of a result record that the comparison table and the ``--json`` summary show.
SUMMARY_KEYS = ("artifact", "status", "p50", "p90", "p99", "mean", "std", "load_ms", "peak_rss_mb", "runtime",
                "runtime_version", "machine", "threads", "runs", "top1")
#: Keys added to the summary when energy was asked for (``bench(..., energy=...)``).
ENERGY_KEYS = ("joules_per_inference", "avg_watts", "energy_sensor", "energy_unavailable_reason")


@dataclass
class BenchResult:
    """The outcome of benchmarking one artefact on one target.

    Attributes:
        artifact: The artefact's path on the host.
        target: The target's description (``local``, ``ssh://user@host:port``).
        status: ``"ok"`` or ``"failed"``.
        data: Everything the agent reported (latencies, p50/p90/p99 in ms, mean, std, load_ms,
            peak_rss_mb, runtime, runtime_version, machine, cpu_model, cpu_cores, ...).
        error: The error message when ``status == "failed"``.
    """

    artifact: str
    target: str
    status: str = "ok"
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def p50(self) -> float | None:
        """Median latency in ms (None when the run failed)."""
        value = self.data.get("p50")
        return float(value) if value is not None else None

    def record(self) -> dict[str, Any]:
        """The JSON-lines record: artefact, target, status, error and all agent data."""
        rec: dict[str, Any] = {"artifact": self.artifact, "target": self.target, "status": self.status}
        if self.error:
            rec["error"] = self.error
        rec.update({k: v for k, v in self.data.items() if k not in rec})
        return rec

    def summary(self, reference: BenchResult | None = None) -> dict[str, Any]:
        """The short dict for the ``--json`` summary; ``ratio_p50`` is relative to ``reference``."""
        rec = self.record()
        out = {k: rec.get(k) for k in SUMMARY_KEYS}
        if "energy_unavailable_reason" in rec:
            out.update({k: rec.get(k) for k in ENERGY_KEYS})
        out["target"] = self.target
        if self.error:
            out["error"] = self.error
        out["ratio_p50"] = ratio(self.p50, reference.p50 if reference else None)
        return out


class JsonlWriter:
    """Appends one JSON object per line and flushes/fsyncs it, so nothing is lost if a run dies.

    Args:
        path: The file (created with its parent folder if missing; never truncated).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record`` (with a ``time`` stamp) as one line."""
        line = json.dumps({"time": time.time(), **record}, default=str, sort_keys=True)
        with _APPEND_LOCK, self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a JSON-lines results file."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
