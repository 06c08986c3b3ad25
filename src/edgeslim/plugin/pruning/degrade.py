"""Check and degrade: prune for real, check the forward, and leave whole the groups that break it.

torch-pruning follows channels through the ops autograd records. A forward that hides a dependency
(a reshape by a hard-coded channel count, indexing with a constant tensor, a size attribute read at run
time) breaks after pruning. :func:`prune_checked` prunes a copy, runs it on the example inputs and
compares its output shapes with the original's. When it fails, the plan's groups are bisected with real
prunes to find the ones responsible; those are left whole (ignored, with the reason) and the remaining
groups are re-planned to still meet the target. The model passed in is never modified.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from edgeslim.errors import EdgeslimError, UntraceableModelError
from edgeslim.models import clone
from edgeslim.plugin.pruning.config import PruneConfig, TargetKind
from edgeslim.plugin.pruning.graph import forward_failure, output_shapes
from edgeslim.plugin.pruning.importance.base import Batch, LossFn, needs_data
from edgeslim.plugin.pruning.metrics import Inputs, ModelStats, call, measure
from edgeslim.plugin.pruning.plan_stats import GroupFailure, PlanEvaluator
from edgeslim.plugin.pruning.structured import Plan, prune_structured
from edgeslim.plugin.pruning.targets import Allocator, goal_value, metric, search_plan

#: Re-planning rounds after leaving groups whole (each round re-checks the new plan for real).
MAX_ROUNDS = 4
#: Groups left whole because torch-pruning raised on them while planning (each costs one new graph).
MAX_GROUP_FAILURES = 16
#: Real trials spent correcting a plan whose real size misses the tolerance.
MAX_CORRECTIONS = 3


@dataclass
class Checked:
    """The pruned copy, the plan applied, and the layers left whole (``{"module", "reason"}``)."""

    model: nn.Module
    plan: Plan
    left_whole: list[dict[str, str]] = field(default_factory=list)
    real_trials: int = 0
    after: ModelStats | None = None  # measured on ``model`` when the target check needed it


@dataclass
class _Job:
    model: nn.Module
    example_inputs: Inputs
    config: PruneConfig
    importance: tp.importance.Importance
    batches: Sequence[Batch]
    loss_fn: LossFn | None
    expected: list[tuple[int, ...]]
    real_trials: int = 0

    def attempt(self, plan: Plan, extra: Sequence[str]) -> tuple[nn.Module, str | None]:
        """Prune a copy following ``plan`` with ``extra`` left whole; the copy and why it fails (or None)."""
        self.real_trials += 1
        work = clone(self.model)
        try:
            prune_structured(work, self.example_inputs, self.config, self.importance, plan, self.batches,
                             self.loss_fn, extra_ignored=extra)
        except EdgeslimError:
            raise
        except Exception as exc:  # torch-pruning itself failed on a group: same treatment as a broken forward
            return work, f"torch-pruning fails while pruning it ({type(exc).__name__}: {str(exc)[:200]})"
        return work, forward_failure(work, self.example_inputs, self.expected, self.config.forward_fn)

    def attempt_with(self, evaluator: PlanEvaluator, plan: Plan) -> tuple[nn.Module, str | None]:
        """Like :meth:`attempt`, pruning the evaluator's own model with its graph (no second trace)."""
        self.real_trials += 1
        try:
            work = evaluator.prune(plan)
        except EdgeslimError:
            raise
        except Exception as exc:
            return evaluator.model, f"torch-pruning fails while pruning it ({type(exc).__name__}: {str(exc)[:200]})"
        return work, forward_failure(work, self.example_inputs, self.expected, self.config.forward_fn)

    def culprits(self, plan: Plan, extra: list[str], groups: list[str], reason: str) -> list[dict[str, str]]:
        """The groups (root layer names) among ``groups`` whose pruning alone breaks the model, by bisection.

        Each half is tried with the other half (and ``extra``) left whole, and searched further with that half
        still whole: a broken group in one half never makes the other half's groups look broken."""
        if len(groups) == 1:
            return [{"module": groups[0], "reason": reason}]
        half = len(groups) // 2
        found: list[dict[str, str]] = []
        for part, rest in ((groups[:half], groups[half:]), (groups[half:], groups[:half])):
            _, why = self.attempt(plan, [*extra, *rest])
            if why is not None:
                found += self.culprits(plan, [*extra, *rest], part, why)
        return found or [{"module": g, "reason": f"{reason} (only with the other groups listed)"} for g in groups]


def prune_checked(
    model: nn.Module,
    example_inputs: Inputs,
    config: PruneConfig,
    importance: tp.importance.Importance,
    before: ModelStats,
    *,
    plan: Plan | None = None,
    allocator: Allocator | None = None,
    on_trial: Callable[[Plan, ModelStats], None] | None = None,
    batches: Sequence[Batch] = (),
    loss_fn: LossFn | None = None,
) -> Checked:
    """Search a plan (unless ``plan`` is given), prune ``model`` and check it; degrade when it breaks.

    ``model`` is the caller's working copy and is consumed (pruned in place or replaced).

    Returns:
        The checked copy. ``left_whole`` lists the groups left whole (root layer and why).

    Raises:
        NearestPlanError: Without the groups left whole the target cannot be met (names them).
        UntraceableModelError: The model breaks even with every group left whole that was found.
    """
    with torch.no_grad():
        expected = output_shapes(call(model.eval(), example_inputs, config.forward_fn))
    # the whole copy for re-planning and bisection shares ``model``'s tensors: pruning replaces tensors, never
    # changes them in place, and every real trial prunes a full clone of it
    job = _Job(clone(model, share=True), example_inputs, config, importance, batches, loss_fn, expected)
    left: list[dict[str, str]] = []
    # one step with a criterion that needs no data: the real prune reuses the search's graph (on ``model``,
    # which is consumed; ``job.model`` stays whole for re-planning and bisection)
    fast = config.iterative_steps == 1 and not needs_data(importance)
    rounds = failures = 0
    while rounds <= MAX_ROUNDS:
        extra = [d["module"] for d in left]
        evaluator = PlanEvaluator(model, example_inputs, config, importance, extra, before)
        try:
            chosen = plan
            if chosen is None:
                chosen, _ = search_plan(model, example_inputs, config, importance, before, allocator=allocator,
                                        on_trial=on_trial, extra_ignored=extra, evaluator=evaluator)
            if not (chosen.ratio > 0 or chosen.group_ratios):
                return Checked(job.model, chosen, [*evaluator.left_whole, *left], job.real_trials)
            roots = evaluator.groups(chosen).roots  # before the evaluator's model is pruned
        except GroupFailure as exc:  # torch-pruning fails on one group while planning: leave it whole, plan again
            failures += 1
            if exc.module in extra or exc.module == "?" or failures > MAX_GROUP_FAILURES:
                raise UntraceableModelError(
                    f"torch-pruning fails on {type(model).__name__} ({exc}) and leaving its groups whole did not "
                    f"help; left whole so far: {extra or 'none'}. List the layers around {exc.module} in "
                    "ignored_layers. Your model was not modified") from exc
            left.append({"module": exc.module, "reason": exc.reason})
            continue
        rounds += 1
        kept = evaluator.left_whole
        if fast:
            work, why = job.attempt_with(evaluator, chosen)
        else:
            work, why = job.attempt(chosen, extra)
        if why is None:
            after = None
            if plan is None:
                work, chosen, after = _correct(job, work, chosen, extra, before)
            return Checked(work, chosen, [*kept, *left], job.real_trials, after)
        model = clone(job.model) if fast else model  # the next round plans on a whole copy
        groups = [name for name, n in roots.items() if n > 0 and name not in extra and name != "?"]
        found = job.culprits(chosen, extra, groups, why) if groups else []
        if not found:
            break
        left += found
    raise UntraceableModelError(
        f"pruning {type(model).__name__} breaks its forward and leaving groups whole did not help ({why}); "
        f"left whole so far: {[d['module'] for d in left] or 'none'}. An op in its forward hides a channel dependency "
        "(detach, no_grad, hard-coded sizes): list the layers around it in ignored_layers. Your model was not modified")


def _correct(job: _Job, work: nn.Module, plan: Plan, extra: list[str],
             before: ModelStats) -> tuple[nn.Module, Plan, ModelStats | None]:
    """When the real pruned size misses the tolerance (estimated MACs, iterative steps), a few real trials
    rescale the plan's ratios; the closest real result is kept (never an estimate)."""
    config = job.config
    kind = config.target.kind
    if kind in (TargetKind.RATIO, TargetKind.SPARSITY):
        return work, plan, None
    goal = goal_value(config, before)
    stats = measure(work, job.example_inputs, config.forward_fn)
    best = (abs(metric(stats, kind) / goal - 1), work, plan, stats)
    current = plan
    for _ in range(MAX_CORRECTIONS):
        err = metric(best[3], kind) / goal - 1
        if abs(err) <= config.tolerance:
            break

        def scaled(r: float, e: float = err) -> float:
            return min(max(1 - (1 - r) / (1 + e) ** 0.5, 0.0), config.max_layer_ratio)

        current = Plan(ratio=scaled(current.ratio) if current.ratio else 0.0,
                       group_ratios={k: scaled(v) for k, v in current.group_ratios.items()},
                       global_ranking=current.global_ranking)
        candidate, why = job.attempt(current, extra)
        if why is not None:
            break
        got = measure(candidate, job.example_inputs, config.forward_fn)
        miss = abs(metric(got, kind) / goal - 1)
        if miss < best[0]:
            best = (miss, candidate, current, got)
    return best[1], best[2], best[3]
