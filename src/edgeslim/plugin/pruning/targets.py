"""Reaching a params / MACs / bytes target: search over the channel ratio (or the λ of a
sensitivity-based allocation) until the size is within tolerance.

Each plan's size comes from :class:`~edgeslim.plugin.pruning.plan_stats.PlanEvaluator` (one dependency
graph per model, no pruning); :func:`trial` prunes a copy for real (used to check and correct the final plan).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch_pruning as tp
from torch import nn

from edgeslim.errors import TargetUnreachableError
from edgeslim.models import clone
from edgeslim.plugin.pruning.config import Allocation, PruneConfig, TargetKind
from edgeslim.plugin.pruning.importance.base import needs_data
from edgeslim.plugin.pruning.metrics import Inputs, ModelStats, measure
from edgeslim.plugin.pruning.plan_stats import PlanEvaluator
from edgeslim.plugin.pruning.structured import Plan, ignored_modules, make_pruner, rule_ratios

Allocator = Callable[[float], dict[str, float]]  # lambda -> group ratios
#: What every "cannot be reached" message offers.
ACCEPT_HINT = "rerun with --accept-nearest (accept_nearest: true in a config or recipe) to use it"


class NearestPlanError(TargetUnreachableError):
    """A target cannot be met within tolerance; the nearest reachable plan is known.

    Attributes:
        kind: The target's kind.
        nearest: What the nearest plan reaches, in the target's unit (fraction kept, or bytes).
        wanted: The target's value.
    """

    def __init__(self, message: str, kind: TargetKind, nearest: float, wanted: float) -> None:
        super().__init__(message)
        self.kind, self.nearest, self.wanted = kind, nearest, wanted


def metric(stats: ModelStats, kind: TargetKind) -> float:
    """The quantity a target of ``kind`` constrains."""
    return float({TargetKind.PARAMS: stats.params, TargetKind.MACS: stats.macs, TargetKind.BYTES: stats.bytes}[kind])


def goal_value(config: PruneConfig, before: ModelStats) -> float:
    """The absolute value of the target (e.g. 0.5 × params before)."""
    t = config.target
    return t.value if t.kind is TargetKind.BYTES else t.value * metric(before, t.kind)


def trial(
    model: nn.Module, example_inputs: Inputs, config: PruneConfig, importance: tp.importance.Importance, plan: Plan,
    extra_ignored: Sequence[str] = (),
) -> ModelStats:
    """Prune a deep copy of ``model`` in one step following ``plan`` and measure it (a real prune)."""
    work = clone(model)
    if needs_data(importance):
        importance.bind(work)
    make_pruner(work, example_inputs, config, importance, plan, extra_ignored=extra_ignored).step()
    if needs_data(importance):
        importance.bind(model)
    return measure(work, example_inputs, config.forward_fn)


def _describe(kind: TargetKind, value: float, before: ModelStats) -> str:
    if kind is TargetKind.BYTES:
        return f"{value / 1e6:.2f} MB"
    return f"{value / metric(before, kind):.3f} of the original {kind.value}"


def reached_value(kind: TargetKind, stats: ModelStats, before: ModelStats) -> float:
    """What ``stats`` reaches in the unit of a ``kind`` target: the fraction kept, or bytes."""
    return metric(stats, kind) if kind is TargetKind.BYTES else metric(stats, kind) / metric(before, kind)


def _ignored(model: nn.Module, config: PruneConfig, extra: Sequence[str] = ()) -> str:
    ids = {id(m) for m in ignored_modules(model, config)}
    names = [n for n, m in model.named_modules() if id(m) in ids and n not in extra] + list(extra)
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return f"ignored layers: {shown or 'none'}"


def _nearest_error(model: nn.Module, config: PruneConfig, stats: ModelStats, before: ModelStats, goal: float,
                   why: str, advice: str, extra: Sequence[str] = ()) -> NearestPlanError:
    kind = config.target.kind
    nearest = reached_value(kind, stats, before)
    return NearestPlanError(
        f"{config.target} cannot be reached for {type(model).__name__}{why}: the nearest reachable plan keeps "
        f"{_describe(kind, metric(stats, kind), before)} (wanted {_describe(kind, goal, before)}; "
        f"max_layer_ratio={config.max_layer_ratio:g}, round_to={config.round_to}, {_ignored(model, config, extra)}"
        f"{_left_whole_note(extra)}); "
        f"{ACCEPT_HINT}, or {advice}", kind, nearest, config.target.value)


def _left_whole_note(extra: Sequence[str]) -> str:
    if not extra:
        return ""
    return f"; left whole because pruning them broke the forward: {', '.join(extra)}"


def target_outcome(config: PruneConfig, before: ModelStats, after: ModelStats) -> dict[str, Any]:
    """``target_met`` for a params/MACs/bytes target, and ``nearest`` (what was reached) when it was not met.

    Returns:
        ``{}`` for ratio and sparsity targets; else ``{"target_met": bool}`` plus, when not met,
        ``{"nearest": {"kind", "value" (fraction kept, or bytes), "wanted", "params", "macs", "bytes"}}``.
    """
    kind = config.target.kind
    if kind in (TargetKind.RATIO, TargetKind.SPARSITY):
        return {}
    met = abs(metric(after, kind) / goal_value(config, before) - 1) <= config.tolerance
    if met:
        return {"target_met": True}
    return {"target_met": False, "nearest": {
        "kind": kind.value, "value": reached_value(kind, after, before), "wanted": config.target.value,
        "params": after.params, "macs": after.macs, "bytes": after.bytes}}


class _Nearest(Exception):  # control flow inside search_plan, never raised out of it
    """The target is unreachable and ``accept_nearest`` is set: return this plan."""

    def __init__(self, plan: Plan, stats: ModelStats) -> None:
        super().__init__()
        self.plan, self.stats = plan, stats


def search_plan(
    model: nn.Module,
    example_inputs: Inputs,
    config: PruneConfig,
    importance: tp.importance.Importance,
    before: ModelStats,
    allocator: Allocator | None = None,
    on_trial: Callable[[Plan, ModelStats], None] | None = None,
    extra_ignored: Sequence[str] = (),
    evaluator: PlanEvaluator | None = None,
) -> tuple[Plan, ModelStats | None]:
    """Find the plan that meets ``config.target`` within ``config.tolerance``.

    For a ``ratio`` target the plan is immediate. Otherwise the channel ratio (uniform or
    global allocation) or the trade-off λ of ``allocator`` (sensitivity allocation) is
    bisected; each plan's size is counted by a :class:`PlanEvaluator` (one graph, nothing pruned;
    ``evaluator`` reuses one). Importance statistics must already be collected. ``extra_ignored``:
    names of layers left whole (groups that broke the forward). With ``config.accept_nearest`` a target
    that cannot be met returns the nearest plan instead.

    Raises:
        NearestPlanError: Even the most aggressive plan stays above the target, or no plan lands
            within tolerance (widths move in steps); the message and the error's ``nearest`` give
            the nearest reachable value (not raised with ``config.accept_nearest``).
    """
    kind = config.target.kind
    global_rank = config.allocation is Allocation.GLOBAL
    if kind is TargetKind.RATIO:
        return Plan(ratio=config.target.value, global_ranking=global_rank), None
    if kind is TargetKind.SPARSITY:
        return Plan(ratio=0.0), None
    goal = goal_value(config, before)
    tol = config.tolerance
    evaluator = evaluator or PlanEvaluator(model, example_inputs, config, importance, extra_ignored, before)

    def plan_at(x: float) -> Plan:
        if allocator is not None:
            return Plan(ratio=0.0, group_ratios=allocator(x))
        return Plan(ratio=x, global_ranking=global_rank)

    lo, hi = 0.0, (1e6 if allocator is not None else config.max_layer_ratio)
    candidates: list[tuple[float, float, Plan, ModelStats]] = []

    def most_aggressive() -> None:
        """Count the most aggressive plan (``hi``); raise when even it stays above the goal."""
        nonlocal hi
        best_plan, best = plan_at(hi), evaluator.stats(plan_at(hi))
        if on_trial:
            on_trial(best_plan, best)
        if metric(best, kind) > goal * (1 + tol) and allocator is None and config.round_to:
            # rounded widths are not monotonic in the ratio: at the largest ratio a group whose kept width rounds
            # down to 0 is not pruned at all, while a smaller ratio prunes it; the most aggressive plan is among these
            for k in range(7, 0, -1):
                x = hi * k / 8
                p, stats = plan_at(x), evaluator.stats(plan_at(x))
                if on_trial:
                    on_trial(p, stats)
                if metric(stats, kind) < metric(best, kind):
                    best_plan, best, hi = p, stats, x
        if metric(best, kind) > goal * (1 + tol):
            if config.accept_nearest:
                raise _Nearest(best_plan, best)
            raise _nearest_error(model, config, best, before, goal, "",
                                 "raise max_layer_ratio, ignore fewer layers, or relax the target", extra_ignored)
        candidates.append((abs(metric(best, kind) / goal - 1), hi, best_plan, best))

    points: list[tuple[float, float]] = []  # (channel ratio, metric) of the uniform trials

    def run(x: float, make: Callable[[float], Plan]) -> float:
        p = make(x)
        stats = evaluator.stats(p)
        if on_trial:
            on_trial(p, stats)
        err = metric(stats, kind) / goal - 1
        candidates.append((abs(err), x, p, stats))
        if make is plan_at:
            points.append((x, metric(stats, kind)))
        return err

    guess = None if allocator is not None else 1 - (goal / metric(before, kind)) ** 0.5
    # the most aggressive plan is counted first only when needed: a first (Newton) guess that reaches the goal
    # already shows the goal is reachable, one trial fewer (rounded widths: counted first, see most_aggressive)
    reachable = False
    try:
        if guess is None or config.round_to or not lo < guess < hi:
            most_aggressive()
            reachable = True
    except _Nearest as near:
        return near.plan, near.stats
    same, ends = 0, dict[str, ModelStats]()  # trials in a row that gave the size of a bracket's end
    for i in range(40):
        if guess is not None and i < 8 and lo < guess < hi:
            # params, MACs and bytes shrink about as (1 - ratio)^p under a channel ratio (p = 2 when every layer
            # loses inputs and outputs, nearer 1 when many keep one side): a secant step on that model, p fitted
            # to the last two trials, lands within tolerance in 1-3 trials where bisection took ~15
            mid = guess
        else:
            mid = (lo + hi) / 2 if allocator is None else (lo * hi) ** 0.5 if lo > 0 else hi / 1e3
        err = run(mid, plan_at)
        if abs(err) <= tol / 2 or (i >= 2 and abs(err) <= tol):  # rounded widths move in jumps: within tol will do
            break
        reachable = reachable or err <= tol
        if not reachable:  # this plan stays above the goal: can any plan reach it?
            try:
                most_aggressive()
            except _Nearest as near:
                return near.plan, near.stats
            reachable = True
        got = candidates[-1][3]
        same = same + 1 if got in ends.values() else 0
        if err > 0:
            lo, ends["lo"] = mid, got
        else:
            hi, ends["hi"] = mid, got
        if same >= 2 and allocator is None and not global_rank:
            break  # twice the same size as a bracket's end: one jump of the widths is left, mixed below
        if guess is not None:
            nxt = 1 - (1 - mid) * (1 / (1 + err)) ** (1 / _exponent(points))
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
    if allocator is None and not global_rank and min(c[0] for c in candidates) > tol / 2:
        _mix_uniform(model, evaluator.root_names(), config, lo, hi, tol, run)
    err_best, _, plan, stats = min(candidates, key=lambda c: c[0])
    if err_best > tol and not config.accept_nearest:
        raise _nearest_error(model, config, stats, before, goal, f" within ±{tol:.0%} (channel widths move in steps)",
                             "try round_to=None or a larger tolerance", extra_ignored)
    return plan, stats


def _exponent(points: Sequence[tuple[float, float]]) -> float:
    """``p`` of ``metric ~ (1 - ratio)^p`` through the last two trials (2 until two distinct ones; within 0.5..4)."""
    if len(points) < 2:
        return 2.0
    (xa, va), (xb, vb) = points[-2], points[-1]
    if xa == xb or va <= 0 or vb <= 0 or va == vb or xa >= 1 or xb >= 1:
        return 2.0
    p = math.log(va / vb) / math.log((1 - xa) / (1 - xb))
    return min(max(p, 0.5), 4.0) if math.isfinite(p) else 2.0


def _mix_uniform(model: nn.Module, roots: list[str], config: PruneConfig, lo: float, hi: float, tol: float,
                 run: Callable[[float, Callable[[float], Plan]], float]) -> None:
    """Uniform allocation whose widths jump past the target (group convs: every group of one width moves
    by a whole group at the same ratio, e.g. RegNet 0.487 vs 0.5): the first ``k`` groups get the
    bracketing ratio ``hi`` (too much pruning), the rest ``lo`` (too little); ``k`` is bisected.
    Each trial is recorded by ``run``."""
    ruled = rule_ratios(model, config.layer_rules)  # layers with their own ratio keep it
    roots = [r for r in roots if r not in ruled]

    def mixed(k: float) -> Plan:
        return Plan(ratio=lo, group_ratios=dict.fromkeys(roots[: int(k)], hi))

    a, b = 0, len(roots)  # err(a) > 0 (too little pruned), err(b) < 0
    while b - a > 1:
        k = (a + b) // 2
        err = run(float(k), mixed)
        if abs(err) <= tol / 2:
            return
        a, b = (k, b) if err > 0 else (a, k)


def uniform_ratios(names: Sequence[str], ratio: float) -> dict[str, float]:
    """The same ratio for every group root (helper for callers building their own plans)."""
    return dict.fromkeys(names, ratio)
