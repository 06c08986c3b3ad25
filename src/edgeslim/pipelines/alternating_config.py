"""The alternating pipeline's settings and results: :class:`AlternatingConfig` (the step layout),
:class:`StepRecord`, :class:`PruneSummary`, :class:`AlternatingResult`, and the check of the
pruning config it accepts. The schedule itself is in :mod:`edgeslim.pipelines.alternating`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from edgeslim.config import from_data, serializable, to_data
from edgeslim.errors import ConfigError, EdgeslimError
from edgeslim.plugin.pruning.config import Allocation, Method, PruneConfig, TargetKind
from edgeslim.plugin.pruning.metrics import ModelStats
from edgeslim.plugin.pruning.schedule import SCHEDULES
from edgeslim.plugin.quantization.api import QuantResult


class AlternatingError(EdgeslimError):
    """The alternating schedule was driven wrongly (stale model or optimizer, finish too early)."""


@serializable(what="alternating config key")
@dataclass(frozen=True)
class AlternatingConfig:
    """When each thing happens, in ``sched.step()`` calls (one per optimizer step, 1-based).

    Args:
        total_steps: Training steps of the whole run.
        qat_from: The model is prepared for QAT at this call (0: before training); every later
            step trains with fake-quant. Must be < ``total_steps``.
        prune_steps: Number of pruning events (``kind="one-shot"``: 1).
        prune_every: Calls between pruning events.
        prune_start: Calls before the first event (events at ``prune_start + 1 + k·prune_every``).
        kind: ``"one-shot"``, ``"iterative"`` or ``"agp"`` (how the amount grows per event).
        freeze_bn_at: Call at which BatchNorm statistics freeze (default: halfway through QAT).
        freeze_observers_at: Call at which quantization ranges freeze (default: 3/4 through
            QAT, and after the last pruning event).
    """

    total_steps: int
    qat_from: int
    prune_steps: int = 5
    prune_every: int = 1
    prune_start: int = 0
    kind: str = "agp"
    freeze_bn_at: int | None = None
    freeze_observers_at: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ConfigError(f"alternating: unknown kind {self.kind!r}; use one of {sorted(SCHEDULES)}")
        if self.total_steps < 1 or self.prune_steps < 1 or self.prune_every < 1 or self.prune_start < 0:
            raise ConfigError("alternating: total_steps, prune_steps and prune_every must be >= 1, prune_start >= 0")
        if not 0 <= self.qat_from < self.total_steps:
            raise ConfigError(
                f"alternating: qat_from={self.qat_from} must lie in [0, total_steps={self.total_steps}) so that "
                "QAT trains for at least one step; lower qat_from or raise total_steps"
            )
        last = self.prune_events()[-1]
        if last > self.total_steps:
            raise ConfigError(
                f"alternating: the last pruning event falls at step {last} > total_steps={self.total_steps}; "
                "lower prune_every / prune_steps / prune_start"
            )
        span = self.total_steps - self.qat_from
        if self.freeze_bn_at is None:
            object.__setattr__(self, "freeze_bn_at", self.qat_from + max(1, span // 2))
        if self.freeze_observers_at is None:
            obs = max(self.qat_from + max(1, 3 * span // 4), last + 1)
            object.__setattr__(self, "freeze_observers_at", obs if obs <= self.total_steps else None)
        for name in ("freeze_bn_at", "freeze_observers_at"):
            v = getattr(self, name)
            if v is not None and not self.qat_from < v <= self.total_steps:
                raise ConfigError(f"alternating: {name}={v} must lie in (qat_from={self.qat_from}, total_steps={self.total_steps}]")

    def prune_events(self) -> tuple[int, ...]:
        """The ``step()`` calls at which a pruning event happens."""
        n = 1 if self.kind == "one-shot" else self.prune_steps
        return tuple(self.prune_start + 1 + k * self.prune_every for k in range(n))

    @classmethod
    def spread(cls, total_steps: int, *, prune_steps: int = 4) -> AlternatingConfig:
        """A default layout: events over the first 60 % of the run, QAT from 1/3 on (so they interleave)."""
        if total_steps < 3:
            raise ConfigError(f"alternating: need at least 3 steps, got {total_steps}")
        prune_steps = max(1, min(prune_steps, (6 * total_steps) // 10))
        every = max(1, (6 * total_steps) // (10 * prune_steps))
        return cls(total_steps, max(1, total_steps // 3), prune_steps, every)

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-able dict (:func:`edgeslim.config.to_data`, untagged)."""
        data: dict[str, Any] = to_data(self, tagged=False)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlternatingConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a ConfigError naming them)."""
        return from_data(data, cls)


@dataclass(frozen=True)
class StepRecord:
    """One ``step()`` call: its number, phase (``float``/``qat``), loss if given, what happened."""

    step: int
    phase: str
    loss: float | None
    events: tuple[str, ...] = ()
    params: int | None = None


@dataclass(frozen=True)
class PruneSummary:
    """Size before/after, per-layer widths (``layer_report`` rows), sparsity, the pruning events."""

    before: ModelStats
    after: ModelStats
    layers: tuple[dict[str, Any], ...]
    sparsity: float
    events: tuple[dict[str, Any], ...]

    @property
    def params_fraction(self) -> float:
        """Parameters kept, as a fraction of the original."""
        return self.after.params / self.before.params


@dataclass(frozen=True)
class AlternatingResult:
    """What :meth:`AlternatingSchedule.finish` and :func:`alternating` return.

    Attributes:
        quant: The converted model (save it with ``edgeslim.save(result.quant, path)``).
        prune: What pruning did.
        history: One record per training step.
        config: The step layout used.
        float_model: The pruned eager model holding the final (QAT-trained, unfolded) weights.
        evals: ``eval_fn`` values (:func:`alternating`): ``before_qat`` and ``converted``.
    """

    quant: QuantResult
    prune: PruneSummary
    history: tuple[StepRecord, ...]
    config: AlternatingConfig
    float_model: nn.Module
    evals: dict[str, float]


def check_prune_config(config: PruneConfig) -> None:
    """Refuse pruning configs whose options contradict each other (before any work)."""
    structural = config.method is not Method.UNSTRUCTURED
    if not structural and config.target.kind in (TargetKind.PARAMS, TargetKind.MACS, TargetKind.BYTES):
        raise ConfigError(f"alternating: method=unstructured cannot reach {config.target} (zeros still count); "
                          "use method=hybrid or a sparsity=... target")
    if config.method is Method.STRUCTURED and config.target.kind is TargetKind.SPARSITY:
        raise ConfigError(f"alternating: target {config.target} is unstructured; use method=unstructured or hybrid")
    if not structural:
        opts = [n for n, bad in (("round_to", config.round_to is not None),
                                 ("allocation", config.allocation is not Allocation.UNIFORM),
                                 ("layer_rules ratio", any(r.ratio is not None for r in config.layer_rules))) if bad]
        if opts:
            raise ConfigError(f"alternating: {', '.join(opts)} only apply to structured pruning; "
                              "drop them or use method=hybrid")
    if config.iterative_steps != 1:
        raise ConfigError("alternating: prune_steps sets the number of pruning events; leave iterative_steps=1")


__all__ = ["AlternatingConfig", "AlternatingError", "AlternatingResult", "PruneSummary", "StepRecord",
           "check_prune_config"]
