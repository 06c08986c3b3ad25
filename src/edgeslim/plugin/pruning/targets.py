"""Reaching a params / MACs / bytes target: search over the channel ratio (or the λ of a
sensitivity-based allocation) on throw-away copies until the measured size is within tolerance."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch_pruning as tp
from torch import nn

from edgeslim.errors import TargetUnreachableError
from edgeslim.plugin.pruning.config import Allocation, PruneConfig, TargetKind
from edgeslim.plugin.pruning.importance.base import needs_data
from edgeslim.plugin.pruning.metrics import Inputs, ModelStats, measure
from edgeslim.plugin.pruning.structured import Plan, make_pruner

Allocator = Callable[[float], dict[str, float]]  # lambda -> group ratios


def metric(stats: ModelStats, kind: TargetKind) -> float:
    """The quantity a target of ``kind`` constrains."""
    return float({TargetKind.PARAMS: stats.params, TargetKind.MACS: stats.macs, TargetKind.BYTES: stats.bytes}[kind])


def goal_value(config: PruneConfig, before: ModelStats) -> float:
    """The absolute value of the target (e.g. 0.5 × params before)."""
    t = config.target
    return t.value if t.kind is TargetKind.BYTES else t.value * metric(before, t.kind)


def trial(
    model: nn.Module, example_inputs: Inputs, config: PruneConfig, importance: tp.importance.Importance, plan: Plan
) -> ModelStats:
    """Prune a deep copy of ``model`` in one step following ``plan`` and measure it."""
    work = copy.deepcopy(model)
    if needs_data(importance):
        importance.bind(work)
    make_pruner(work, example_inputs, config, importance, plan).step()
    return measure(work, example_inputs)


def _describe(kind: TargetKind, value: float, before: ModelStats) -> str:
    if kind is TargetKind.BYTES:
        return f"{value / 1e6:.2f} MB"
    return f"{value / metric(before, kind):.3f} of the original {kind.value}"


def search_plan(
    model: nn.Module,
    example_inputs: Inputs,
    config: PruneConfig,
    importance: tp.importance.Importance,
    before: ModelStats,
    allocator: Allocator | None = None,
    on_trial: Callable[[Plan, ModelStats], None] | None = None,
) -> tuple[Plan, ModelStats | None]:
    """Find the plan that meets ``config.target`` within ``config.tolerance``.

    For a ``ratio`` target the plan is immediate. Otherwise the channel ratio (uniform or
    global allocation) or the trade-off λ of ``allocator`` (sensitivity allocation) is
    bisected on copies of the model; importance statistics must already be collected.

    Raises:
        TargetUnreachableError: Even the most aggressive plan stays above the target; the
            message gives the best reachable value.
    """
    kind = config.target.kind
    global_rank = config.allocation is Allocation.GLOBAL
    if kind is TargetKind.RATIO:
        return Plan(ratio=config.target.value, global_ranking=global_rank), None
    if kind is TargetKind.SPARSITY:
        return Plan(ratio=0.0), None
    goal = goal_value(config, before)
    tol = config.tolerance

    def plan_at(x: float) -> Plan:
        if allocator is not None:
            return Plan(ratio=0.0, group_ratios=allocator(x))
        return Plan(ratio=x, global_ranking=global_rank)

    lo, hi = 0.0, (1e6 if allocator is not None else config.max_layer_ratio)
    best_plan, best = plan_at(hi), trial(model, example_inputs, config, importance, plan_at(hi))
    if on_trial:
        on_trial(best_plan, best)
    if metric(best, kind) > goal * (1 + tol):
        raise TargetUnreachableError(
            f"target {config.target} cannot be reached for {type(model).__name__}: the most that pruning with "
            f"max_layer_ratio={config.max_layer_ratio} and these ignored layers reaches is "
            f"{_describe(kind, metric(best, kind), before)} (wanted {_describe(kind, goal, before)}); "
            "raise max_layer_ratio, ignore fewer layers, or relax the target"
        )
    candidates: list[tuple[float, float, Plan, ModelStats]] = [(abs(metric(best, kind) / goal - 1), hi, best_plan, best)]

    def run(x: float, make: Callable[[float], Plan]) -> float:
        p = make(x)
        stats = trial(model, example_inputs, config, importance, p)
        if on_trial:
            on_trial(p, stats)
        err = metric(stats, kind) / goal - 1
        candidates.append((abs(err), x, p, stats))
        return err

    guess = None if allocator is not None else 1 - (goal / metric(before, kind)) ** 0.5
    for i in range(40):
        if guess is not None and i < 4 and lo < guess < hi:
            # params, MACs and bytes shrink about as (1 - ratio)^2 under a channel ratio: a Newton-like step
            # on that model lands within tolerance in 1-3 trials where bisection took ~15
            mid = guess
        else:
            mid = (lo + hi) / 2 if allocator is None else (lo * hi) ** 0.5 if lo > 0 else hi / 1e3
        err = run(mid, plan_at)
        if abs(err) <= tol / 2 or (i >= 2 and abs(err) <= tol):  # rounded widths move in jumps: within tol will do
            break
        if err > 0:
            lo = mid
        else:
            hi = mid
        if guess is not None:
            nxt = 1 - (1 - mid) * (1 / (1 + err)) ** 0.5
            guess = nxt if abs(nxt - mid) > 1e-3 else None
        if (allocator is None and hi - lo < 1e-4) or (allocator is not None and lo > 0 and hi / lo < 1.0001):
            break
    if allocator is not None and min(c[0] for c in candidates) > tol / 2:
        # λ moves the allocation in jumps; blend the two bracketing allocations continuously.
        under, over = allocator(lo) if lo > 0 else {}, allocator(hi)

        def blend(t: float) -> Plan:
            keys = set(under) | set(over)
            return Plan(ratio=0.0, group_ratios={
                k: (1 - t) * under.get(k, 0.0) + t * over.get(k, 0.0) for k in keys})

        a, b = 0.0, 1.0
        for _ in range(20):
            t = (a + b) / 2
            err = run(t, blend)
            if abs(err) <= tol / 2:
                break
            a, b = (t, b) if err > 0 else (a, t)
    err_best, _, plan, stats = min(candidates, key=lambda c: c[0])
    if err_best > tol:
        raise TargetUnreachableError(
            f"target {config.target} could not be met within ±{tol:.0%}: the closest plan gives "
            f"{_describe(kind, metric(stats, kind), before)}; try round_to=None or a larger tolerance"
        )
    return plan, stats


def uniform_ratios(names: Sequence[str], ratio: float) -> dict[str, float]:
    """The same ratio for every group root (helper for callers building their own plans)."""
    return dict.fromkeys(names, ratio)
