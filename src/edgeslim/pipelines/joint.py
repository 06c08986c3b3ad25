"""Joint search: per-group channel width (keep ratio × rounding) and weight bit-width under a
budget of latency (measured on the target), bytes or MACs.

Accuracy is predicted by the sensitivity analysis (loss increase per group, additive), latency
by per-layer tables measured on the target (:mod:`edgeslim.pipelines.latency`) calibrated by a
linear fit against whole-model measurements. A NetAdapt-style greedy descent shrinks, at each
step, the group whose next rung buys the most budget per unit of predicted loss; whenever the
prediction says the budget is met (or fell 25 % since the last measurement), the whole model is
measured and the fit refined. With an ``eval_fn`` every step is also evaluated for real: a step
losing more than ``max_step_drop`` points of top-1 is rejected and its group penalised.

Latency is never judged on one reading: a whole model is timed together with the unpruned
reference model(s) in one bench session, in interleaved rounds
(:class:`edgeslim.pipelines.latency_compare.Comparison`); a ``speedup`` budget is judged on the
ratio of the medians of the same session, a ``latency_ms`` budget on the model's median there.
Finally the whole front is re-timed with the references in one session (``final_rounds``), and
among the members meeting the budget there the most accurate (real top-1 with ``eval_fn``, else
the proxy) is chosen — the faster one when two are within :data:`TIE_POINTS` of top-1.
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from edgeslim.config import codec, serializable, to_data
from edgeslim.errors import ConfigError, TargetUnreachableError
from edgeslim.pipelines.joint_descent import (
    Candidate,
    EvalFn,
    EventHandler,
    Probe,
    Search,
    apply_widths,
    descend,
    describe,
    meets,
    pareto,
    select_front,
    value,
)
from edgeslim.pipelines.joint_space import ModelSpace, analyse, bit_damage
from edgeslim.pipelines.latency import LatencyKey, LatencyMeter
from edgeslim.pipelines.latency_compare import Comparison
from edgeslim.plugin.pruning.api import PruneResult
from edgeslim.plugin.pruning.config import PruneConfig
from edgeslim.plugin.pruning.importance.base import Batch, LossFn
from edgeslim.plugin.pruning.metrics import Inputs
from edgeslim.plugin.pruning.sensitivity import SensitivityResult, sensitivity

#: Two candidates whose real top-1 differ by at most this many points count as equally accurate (the faster wins).
TIE_POINTS = 0.5
#: When no front member meets the budget in the final session, the descent continues this many times.
FINAL_RETRIES = 2


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


@serializable()
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


@serializable(omit=("space",), extras={"layers": lambda r: r.layers()})
@dataclass
class SearchResult:
    """Everything the search evaluated and chose.

    Attributes:
        candidates: Every plan evaluated.
        front: Up to ``max_front`` members of the predicted Pareto front (proxy, bytes, predicted ms),
            plus up to ``FINAL_RETRIES`` plans of further descents (when a final session found no member
            meeting the budget: a loaded machine), all re-timed together with the references in one final session;
            kept where non-dominated in (proxy or top-1, bytes, measured ms). Each carries
            ``measured_ms``, ``speedup`` and ``reference_ms`` (of that session) and ``rounds``.
        chosen: The most accurate front member meeting the budget in the final session.
        trace: One row per evaluated move: step, change, bytes, macs, predicted_ms,
            measured_ms (latest, or None), proxy, top1 (or None), from_top1 (the top-1 of the plan the step
            started from, or None), rejected (top-1 collapsed), accepted.
        measurements: Device measurements used (layer entries, whole models and references per session).
        table_key: The latency table's key.
        budget: The budget; ``limits`` its values (``latency_ms``, ``speedup``, ``bytes``, ``macs``)
            and ``ms``, the latency limit in ms against the chosen one's session references.
        space: The model's groups and layers.
        fit: ``(a, b)`` of ``measured ≈ a · Σ table + b``.
        reference_ms: ``{precision: median ms}`` of the unpruned references in the chosen one's session.
        seconds: Wall time of the search.
    """

    candidates: list[Candidate] = field(metadata=codec(len))  # written as their number
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
        """JSON-able form (:func:`edgeslim.config.to_data`, untagged): ``front``, ``trace``, ``measurements``, ``budget``,
        ``chosen``, ``layers`` (of the chosen plan), ``candidates`` (their number) ...; not ``space``."""
        data: dict[str, Any] = to_data(self, tagged=False)
        return data

    def apply(self, model: nn.Module, example_inputs: Inputs, candidate: Candidate | None = None) -> PruneResult:
        """Prune ``model`` (a copy) to ``candidate`` (default: the chosen one)."""
        return apply_widths(model, example_inputs, self.space, candidate or self.chosen)


def _limits(budget: Budget) -> dict[str, float]:
    """The budget as limits (``ms``, the predicted-latency limit, is added by the search's fit)."""
    out = {"latency_ms": budget.latency_ms, "speedup": budget.speedup, "bytes": budget.bytes, "macs": budget.macs}
    return {k: float(v) for k, v in out.items() if v is not None}


def choose(front: Sequence[Candidate], limits: dict[str, float], timed: bool, by_top1: bool) -> Candidate | None:
    """The most accurate member of ``front`` meeting ``limits`` (None when none does).

    Accuracy is ``top1`` when ``by_top1`` (of members within :data:`TIE_POINTS` of the best, the
    fastest by measured ms), else the lowest proxy (then the fastest).
    """
    ok = [c for c in front if meets(c, limits, measured=timed)]
    if not ok:
        return None
    if by_top1:
        best = max(c.top1 or 0.0 for c in ok)
        near = [c for c in ok if 100 * (best - (c.top1 or 0.0)) <= TIE_POINTS]
        return min(near, key=lambda c: (value(c, "ms", measured=True), -(c.top1 or 0.0)))
    return min(ok, key=lambda c: (c.proxy, value(c, "ms", measured=True)))


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
    eval_fn: EvalFn | None = None,
    max_front: int = 6,
    cache_dir: str | None = None,
    on_event: EventHandler | None = None,
    runs: int = 20,
    data_batches: int = 4,
    loss_fn: LossFn | None = None,
    sensitivity_table: SensitivityResult | None = None,
    rounds: int = 3,
    final_rounds: int = 5,
    max_step_drop: float = 5.0,
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
        eval_fn: Top-1, as a fraction in [0, 1], of a pruned model on the caller's small labelled
            subset (no fine-tuning), e.g. ``edgeslim.exporters.accuracy.torch_top1``: evaluates
            every descent step (see ``max_step_drop``) and every front member, and ranks the front;
            without it the sensitivity proxy ranks.
        max_front: Front members pruned, exported and measured whole.
        cache_dir: Latency tables folder (default ``$EDGESLIM_CACHE/latency`` or ``~/.cache/edgeslim/latency``).
        on_event: Called with ``(kind, data)``: ``fit``, ``step``, ``measured``, ``evaluated``, ``chosen``.
        runs: Timed runs per artefact and round.
        data_batches: Batches of ``data`` the sensitivity analysis (and the bit-width damage) use.
        loss_fn: Loss of the proxy (default cross-entropy).
        sensitivity_table: A sensitivity analysis of ``model`` computed before (at ratios
            ``1 - keep_ratios``); reused instead of computing one (searches with other budgets).
        rounds: Interleaved rounds of a whole-model session during the descent.
        final_rounds: Interleaved rounds of the final session (the whole front and the references).
        max_step_drop: With ``eval_fn``: a descent step losing more top-1 than this (points) is rejected.

    Returns:
        A :class:`SearchResult`; ``result.apply(model, example_inputs)`` prunes to the chosen plan.

    Raises:
        ConfigError: Invalid budget, space, runtime, precision or rounds (before any measurement);
            ``eval_fn`` returning no fraction in [0, 1].
        BudgetUnreachableError: No candidate meets the budget; names the nearest reachable one.
    """
    t0 = time.monotonic()
    space = space or SearchSpace()
    if max_front < 1 or data_batches < 1 or rounds < 1 or final_rounds < rounds or max_step_drop <= 0:
        raise ConfigError(f"joint_search: need max_front, data_batches, rounds >= 1, final_rounds >= rounds and "
                          f"max_step_drop > 0 (got {max_front}, {data_batches}, {rounds}, {final_rounds}, "
                          f"{max_step_drop})")
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
    x = example_inputs[0] if isinstance(example_inputs, tuple) else example_inputs
    label = budget.speedup_reference if budget.speedup is not None else quant
    limits = _limits(budget)
    ladder = space.bits if quant == "int8" else (32,)
    with Comparison(meter, {quant: (work, quant), label: (work, label)}, channels=int(x.shape[1])) as timer:
        probe = Probe(work, example_inputs, timer, quant, label, rounds, eval_fn, max_step_drop)
        s = Search(mspace, meter, sensitivity_table, bit_loss, on_event, probe, limits)
        start = s.candidate(mspace.full(), {g.name: ladder[0] for g in mspace.groups}, 0)
        s.predict([start])
        if budget.timed:
            s.measure([start])

        def unreachable(near: Candidate) -> BudgetUnreachableError:
            want = ", ".join(f"{k} {'>=' if k == 'speedup' else '<='} {v:.4g}" for k, v in limits.items() if k != "ms")
            return BudgetUnreachableError(
                f"joint_search: no candidate meets the budget ({want}) on {device}/{runtime}/{threads} threads at "
                f"{input_size[0]}x{input_size[1]} {quant}: the nearest reachable measures {describe(near, limits)} "
                f"(keep ratios down to {min(space.keep_ratios)}); relax the budget or add smaller keep ratios")

        last = descend(s, start, ladder)
        if not meets(last, limits, measured=budget.timed):
            raise unreachable(last)
        front = select_front(pareto(s.seen.values(), lambda c: c.proxy), limits, max_front)
        chosen = None
        for _ in range(FINAL_RETRIES + 1):
            s.measure(front, final_rounds, again=True)  # one session: every member with the references
            s.evaluate(front)
            chosen = choose(front, limits, budget.timed, eval_fn is not None)
            if chosen is not None or not budget.timed:
                break
            nearest = min(front, key=lambda c: value(c, "ms", measured=True) / (c.reference_ms or 1.0))
            nxt = descend(s, nearest, ladder)  # the session disagreed with the descent: go on from the fastest
            if any(c is nxt for c in front):
                break
            front = [*front, nxt]
    if chosen is None:
        raise unreachable(min(front, key=lambda c: value(c, "ms", measured=True) / (c.reference_ms or 1.0)))
    for row, c in zip(s.trace, s.trace_refs, strict=True):
        row.update(measured_ms=c.measured_ms, speedup=c.speedup, reference_ms=c.reference_ms, top1=c.top1)
    s.event("chosen", widths=chosen.widths, measured_ms=chosen.measured_ms, speedup=chosen.speedup,
            reference_ms=chosen.reference_ms, proxy=chosen.proxy, top1=chosen.top1)

    def accuracy(c: Candidate) -> float:
        return c.proxy if eval_fn is None else -(c.top1 if c.top1 is not None else -1.0)

    front_out = sorted(pareto(front, accuracy, lambda c: value(c, "ms", measured=True)), key=accuracy)
    front_out += [] if any(c is chosen for c in front_out) else [chosen]
    if budget.speedup is not None and chosen.references:
        limits["ms"] = min(limits.get("latency_ms", math.inf), chosen.references[label] / budget.speedup)
    return SearchResult(list(s.seen.values()), front_out, chosen, s.trace, meter.measurements, key, budget,
                        limits, mspace, s.fit, dict(chosen.references), time.monotonic() - t0)
