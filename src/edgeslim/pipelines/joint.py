"""Joint search: per-group channel width (keep ratio × rounding) and weight bit-width under a
budget of latency (measured on the target), bytes or MACs.

Accuracy is predicted by the sensitivity analysis (loss increase per group, additive), latency
by per-layer tables measured on the target (:mod:`edgeslim.pipelines.latency`) calibrated by a
linear fit against whole-model measurements. A NetAdapt-style greedy descent shrinks, at each
step, the group whose next rung buys the most budget per unit of predicted loss; whenever the
prediction says the budget is met (or fell 25 % since the last measurement), the whole model is
measured and the fit refined. Every
candidate on the final Pareto front is pruned, exported and measured whole; the most accurate
measured candidate within the budget is chosen.
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from torch import nn

from edgeslim.errors import ConfigError, TargetUnreachableError
from edgeslim.pipelines.joint_descent import (
    Candidate,
    EventHandler,
    Search,
    apply_widths,
    cost,
    descend,
    describe,
    meets,
    pareto,
    select_front,
    value,
)
from edgeslim.pipelines.joint_space import ModelSpace, analyse, bit_damage
from edgeslim.pipelines.latency import LatencyKey, LatencyMeter
from edgeslim.plugin.pruning.api import PruneResult
from edgeslim.plugin.pruning.config import PruneConfig
from edgeslim.plugin.pruning.importance.base import Batch, LossFn
from edgeslim.plugin.pruning.metrics import Inputs
from edgeslim.plugin.pruning.sensitivity import SensitivityResult, sensitivity


class BudgetUnreachableError(TargetUnreachableError):
    """No candidate of the joint search meets the budget; the message gives the nearest reachable."""


@dataclass(frozen=True)
class SearchSpace:
    """Per-group choices: keep ratios (1.0, the start, is always included), channel rounding, weight bits.

    ``bits`` ⊂ {4, 8}: the bit-width of a group's weights, counted in bytes (4-bit weights
    shrink files, not time: latency tables are measured at the search's ``quant``).
    ``groups``: root names (or full-match regexes) of the groups searched; the others keep
    their width and the largest bit-width (``None``: every group).
    """

    keep_ratios: tuple[float, ...] = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
    round_to: tuple[int, ...] = (8, 16)
    bits: tuple[int, ...] = (8,)
    groups: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_ratios", tuple(sorted({float(r) for r in self.keep_ratios} | {1.0})))
        object.__setattr__(self, "round_to", tuple(int(r) for r in self.round_to))
        object.__setattr__(self, "bits", tuple(sorted({int(b) for b in self.bits}, reverse=True)))
        if any(not 0.0 < r <= 1.0 for r in self.keep_ratios):
            raise ConfigError(f"SearchSpace: keep_ratios must lie in (0, 1], got {self.keep_ratios}")
        if not self.round_to or any(r < 1 for r in self.round_to):
            raise ConfigError(f"SearchSpace: round_to needs at least one value >= 1, got {self.round_to}")
        if not self.bits or not set(self.bits) <= {4, 8}:
            raise ConfigError(f"SearchSpace: bits must be a non-empty subset of (4, 8), got {self.bits}")
        if self.groups is not None:
            object.__setattr__(self, "groups", tuple(self.groups))
            for pat in self.groups:
                try:
                    re.compile(pat)
                except re.error as exc:
                    raise ConfigError(f"SearchSpace: group pattern {pat!r} is not a valid regex: {exc}") from None

    def restrict(self, mspace: ModelSpace) -> None:
        """Freeze the groups of ``mspace`` that :attr:`groups` does not select (their ladder: full width only).

        Raises:
            ConfigError: A pattern selects no group (the message lists the groups).
        """
        if self.groups is None:
            return
        names = [g.name for g in mspace.groups]
        for pat in self.groups:
            if not any(n == pat or re.fullmatch(pat, n) for n in names):
                raise ConfigError(f"SearchSpace: group {pat!r} matches no channel group; groups: {names}")
        mspace.groups = [g if any(g.name == p or re.fullmatch(p, g.name) for p in self.groups)
                         else replace(g, ladder=g.ladder[:1], searched=False) for g in mspace.groups]


@dataclass(frozen=True)
class Budget:
    """What the chosen model must meet (at least one field).

    Args:
        latency_ms: Measured median latency on the target, in ms.
        speedup: Measured speed-up over the unpruned model exported at ``speedup_reference``
            precision on the same target, runtime and threads (5.0: five times faster).
        bytes: Deployed weight bytes (conv/linear weights at their bit-width, the rest fp32).
        macs: Conv/linear multiply-accumulates for one example input.
        speedup_reference: ``"fp32"`` (default) or ``"int8"``.
    """

    latency_ms: float | None = None
    speedup: float | None = None
    bytes: float | None = None
    macs: float | None = None
    speedup_reference: str = "fp32"

    def __post_init__(self) -> None:
        values = {"latency_ms": self.latency_ms, "speedup": self.speedup, "bytes": self.bytes, "macs": self.macs}
        if all(v is None for v in values.values()):
            raise ConfigError("Budget needs at least one of latency_ms, speedup, bytes, macs, e.g. Budget(speedup=2)")
        for name, v in values.items():
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"Budget.{name} must be a positive number, got {v!r}")
        if self.speedup_reference not in ("fp32", "int8"):
            raise ConfigError(f"Budget.speedup_reference must be 'fp32' or 'int8', got {self.speedup_reference!r}")

    @property
    def timed(self) -> bool:
        """Whether the budget constrains latency."""
        return self.latency_ms is not None or self.speedup is not None


@dataclass
class SearchResult:
    """Everything the search evaluated and chose.

    Attributes:
        candidates: Every plan evaluated.
        front: Up to ``max_front`` members of the predicted Pareto front (proxy, bytes, predicted ms),
            all measured whole, and the chosen one, kept where non-dominated in (proxy or top-1,
            bytes, measured ms).
        chosen: The most accurate measured candidate meeting the budget.
        trace: One row per evaluated move: step, change, bytes, macs, predicted_ms,
            measured_ms (or None), proxy, accepted.
        measurements: Device measurements used (layer entries and whole models).
        table_key: The latency table's key.
        budget: The budget; ``limits`` its absolute values (``ms``, ``bytes``, ``macs``).
        space: The model's groups and layers.
        fit: ``(a, b)`` of ``measured ≈ a · Σ table + b``.
    """

    candidates: list[Candidate]
    front: list[Candidate]
    chosen: Candidate
    trace: list[dict[str, Any]]
    measurements: int
    table_key: LatencyKey
    budget: Budget
    limits: dict[str, float]
    space: ModelSpace
    fit: tuple[float, float]
    reference_ms: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def layers(self, candidate: Candidate | None = None) -> list[dict[str, Any]]:
        """Per-layer rows ``{name, channels_before, channels_after, keep_ratio, bits}``."""
        c = candidate or self.chosen
        rows = []
        for layer in self.space.layers:
            _, cout, _ = self.space.shape(layer, c.widths)
            bits = c.bits.get(layer.out_group, self.space.fixed_bits) if layer.out_group else self.space.fixed_bits
            rows.append({"name": layer.name, "channels_before": layer.cout, "channels_after": cout,
                         "keep_ratio": cout / layer.cout, "bits": bits})
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``front``, ``trace``, ``measurements``, ``budget``, ``chosen``, ``layers`` ..."""
        return {"front": [c.to_dict() for c in self.front], "trace": self.trace, "measurements": self.measurements,
                "budget": asdict(self.budget), "limits": self.limits, "chosen": self.chosen.to_dict(),
                "layers": self.layers(), "table_key": self.table_key.to_dict(), "fit": list(self.fit),
                "reference_ms": self.reference_ms, "candidates": len(self.candidates), "seconds": self.seconds}

    def apply(self, model: nn.Module, example_inputs: Inputs, candidate: Candidate | None = None) -> PruneResult:
        """Prune ``model`` (a copy) to ``candidate`` (default: the chosen one)."""
        return apply_widths(model, example_inputs, self.space, candidate or self.chosen)


def _limits(budget: Budget, reference: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    if budget.latency_ms is not None:
        out["ms"] = budget.latency_ms
    if budget.speedup is not None:
        out["ms"] = min(out.get("ms", math.inf), reference[budget.speedup_reference] / budget.speedup)
    if budget.bytes is not None:
        out["bytes"] = budget.bytes
    if budget.macs is not None:
        out["macs"] = budget.macs
    return out


def joint_search(
    model: nn.Module,
    example_inputs: Inputs,
    *,
    data: Iterable[Batch],
    budget: Budget,
    space: SearchSpace | None = None,
    device: str = "local",
    runtime: str = "onnxruntime",
    threads: int = 2,
    input_size: tuple[int, int] = (224, 224),
    quant: str = "int8",
    eval_fn: Callable[[nn.Module], float] | None = None,
    max_front: int = 6,
    cache_dir: str | None = None,
    on_event: EventHandler | None = None,
    runs: int = 20,
    data_batches: int = 4,
    loss_fn: LossFn | None = None,
    sensitivity_table: SensitivityResult | None = None,
) -> SearchResult:
    """Search per-group widths (and weight bits) of ``model`` under ``budget``, latency measured on ``device``.

    Args:
        model: An eager model torch-pruning can trace (not modified).
        example_inputs: Inputs for tracing, the sensitivity analysis and MAC counts.
        data: Real batches ``(x, y)``; the first ``data_batches`` feed the sensitivity analysis.
        budget: Latency (ms or speed-up), bytes and/or MACs the chosen model must meet.
        space: Keep ratios, channel roundings and bit-widths per group.
        device: Bench target (``local``, ``ssh://user@host``, a devices-file name).
        runtime: Bench runtime (``onnxruntime`` → ONNX artefacts, ``ai-edge-litert`` → TFLite).
        threads: Runtime threads.
        input_size: Height and width latency is measured at.
        quant: ``int8`` or ``fp32``: the precision the candidates are exported and timed at.
        eval_fn: Top-1 of a pruned model on a small labelled subset (no fine-tuning): re-ranks
            the measured front; without it the sensitivity proxy ranks.
        max_front: Front members pruned, exported and measured whole.
        cache_dir: Latency tables folder (default ``$EDGESLIM_CACHE/latency`` or ``~/.cache/edgeslim/latency``).
        on_event: Called with ``(kind, data)``: ``fit``, ``step``, ``measured``, ``chosen``.
        runs: Timed runs per benchmarked artefact.
        data_batches: Batches of ``data`` the sensitivity analysis (and the bit-width damage) use.
        loss_fn: Loss of the proxy (default cross-entropy).
        sensitivity_table: A sensitivity analysis of ``model`` computed before (at ratios
            ``1 - keep_ratios``); reused instead of computing one (searches with other budgets).

    Returns:
        A :class:`SearchResult`; ``result.apply(model, example_inputs)`` prunes to the chosen plan.

    Raises:
        ConfigError: Invalid budget, space, runtime or precision (before any measurement).
        BudgetUnreachableError: No candidate meets the budget; names the nearest reachable one.
    """
    t0 = time.monotonic()
    space = space or SearchSpace()
    if max_front < 1 or data_batches < 1:
        raise ConfigError(f"joint_search: max_front and data_batches must be >= 1 (got {max_front}, {data_batches})")
    if quant == "fp32" and space.bits != (8,):
        raise ConfigError("joint_search: bits apply to int8 searches only; use quant='int8' or space.bits=(8,)")
    key = LatencyKey(device, runtime, threads, input_size, quant)
    meter = LatencyMeter(key, cache_dir, runs=runs)
    loss_fn = loss_fn or nn.functional.cross_entropy
    batches = [b for _, b in zip(range(data_batches), data, strict=False)]
    work = copy.deepcopy(model).eval()
    mspace = analyse(work, example_inputs, key.input_size, space.keep_ratios, space.round_to,
                     fixed_bits=8 if quant == "int8" else 32)
    space.restrict(mspace)
    if sensitivity_table is None:
        ratios = tuple(sorted({round(1 - r, 6) for r in space.keep_ratios if r < 1.0}))
        cfg = PruneConfig(sensitivity_ratios=ratios, data_batches=data_batches, max_layer_ratio=1.0)
        sensitivity_table = sensitivity(work, example_inputs, batches, cfg, loss_fn=loss_fn)
    bit_loss = {b: bit_damage(work, mspace, b, batches, loss_fn) for b in space.bits if b < 8}
    s = Search(mspace, meter, sensitivity_table, bit_loss, on_event)
    top_bits = space.bits[0] if quant == "int8" else 32
    start = s.candidate(mspace.full(), {g.name: top_bits for g in mspace.groups}, 0)
    s.predict([start])
    reference: dict[str, float] = {}
    ref_meter = None
    if budget.timed:
        s.measure([start], work, example_inputs)
        reference[quant] = float(start.measured_ms or 0.0)
        if budget.speedup is not None and budget.speedup_reference != quant:
            ref_meter = LatencyMeter(LatencyKey(device, runtime, threads, input_size, budget.speedup_reference),
                                     cache_dir, runs=runs)
            x = example_inputs[0] if isinstance(example_inputs, tuple) else example_inputs
            reference[budget.speedup_reference] = ref_meter.models([work], channels=int(x.shape[1]))[0]
    limits = _limits(budget, reference)

    def unreachable(near: Candidate) -> BudgetUnreachableError:
        want = ", ".join(f"{k} <= {v:.4g}" for k, v in limits.items())
        return BudgetUnreachableError(
            f"joint_search: no candidate meets the budget ({want}) on {device}/{runtime}/{threads} threads at "
            f"{input_size[0]}x{input_size[1]} {quant}: the nearest reachable measures {describe(near, limits)} "
            f"(keep ratios down to {min(space.keep_ratios)}); relax the budget or add smaller keep ratios")

    last = descend(s, start, limits, space.bits if quant == "int8" else (32,), work, example_inputs)
    if not meets(last, limits, measured=budget.timed):
        raise unreachable(last)
    accuracy: Callable[[Candidate], float] = (
        (lambda c: c.proxy) if eval_fn is None else (lambda c: -(c.top1 if c.top1 is not None else -1.0)))
    front = select_front(pareto(s.seen.values(), lambda c: c.proxy), limits, max_front)
    s.measure(front, work, example_inputs)
    if eval_fn is not None:
        for c in front:
            c.top1 = float(eval_fn(apply_widths(work, example_inputs, mspace, c).model))
    pool = [c for c in s.seen.values() if meets(c, limits, measured=budget.timed) and (eval_fn is None or c.top1 is not None)]
    if not pool:
        measured = [c for c in s.seen.values() if c.measured_ms is not None or not budget.timed]
        raise unreachable(min(measured or [last], key=lambda c: cost(c, limits)))
    chosen = min(pool, key=accuracy)
    for row, c in zip(s.trace, s.trace_refs, strict=True):
        row["measured_ms"] = c.measured_ms
    s.event("chosen", widths=chosen.widths, measured_ms=chosen.measured_ms, proxy=chosen.proxy)
    final = front if chosen in front else [*front, chosen]
    front_out = sorted(pareto(final, accuracy, lambda c: value(c, "ms", measured=True)), key=accuracy)
    count = meter.measurements + (ref_meter.measurements if ref_meter is not None else 0)
    return SearchResult(list(s.seen.values()), front_out, chosen, s.trace, count, key, budget,
                        limits, mspace, s.fit, reference, time.monotonic() - t0)
