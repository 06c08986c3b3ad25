"""``PruningSchedule``: prune gradually inside the user's own training loop.

::

    sched = PruningSchedule(model, x, PruneConfig(target=Target.parse("params=0.5")),
                            optimizer=opt, kind="agp", total_steps=10, every=100, data=loader)
    for x, y in loader:
        loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
        sched.step()          # prunes at steps 100, 200, ... 1000; keeps `opt` consistent

After each structural pruning event the optimizer's parameters are replaced by the new, smaller
ones and its per-parameter state (momentum, Adam moments) is sliced to the surviving channels, so
any ``torch.optim`` optimizer keeps working.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from edgeslim.errors import ConfigError
from edgeslim.models import clone
from edgeslim.plugin.pruning.config import Allocation, Method, PruneConfig, TargetKind
from edgeslim.plugin.pruning.importance import make, needs_data
from edgeslim.plugin.pruning.importance.base import Batch, LossFn
from edgeslim.plugin.pruning.metrics import Inputs, measure
from edgeslim.plugin.pruning.sensitivity import sensitivity
from edgeslim.plugin.pruning.structured import Plan, ignored_modules, make_pruner
from edgeslim.plugin.pruning.targets import search_plan
from edgeslim.plugin.pruning.unstructured import Masks, compute_masks

F = tp.pruner.function
#: pruning function -> {parameter leaf name: dimension it removes}
_PARAM_DIMS: dict[Any, dict[str, int]] = {
    F.prune_conv_out_channels: {"weight": 0, "bias": 0},
    F.prune_conv_in_channels: {"weight": 1},
    F.prune_depthwise_conv_out_channels: {"weight": 0, "bias": 0},
    F.prune_depthwise_conv_in_channels: {"weight": 0, "bias": 0},
    F.prune_linear_out_channels: {"weight": 0, "bias": 0},
    F.prune_linear_in_channels: {"weight": 1},
    F.prune_batchnorm_out_channels: {"weight": 0, "bias": 0},
    F.prune_batchnorm_in_channels: {"weight": 0, "bias": 0},
}

#: kind -> fraction of the final amount reached after event k of n
SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "one-shot": lambda k, n: 1.0,
    "iterative": lambda k, n: k / n,
    "agp": lambda k, n: 1.0 - (1.0 - k / n) ** 3,  # Zhu & Gupta, 2017
}


def _scheduler(kind: str) -> Callable[[float, int], list[float]]:
    fn = SCHEDULES[kind]
    return lambda ratio, steps: [0.0] + [ratio * fn(k, steps) for k in range(1, steps + 1)]


def _slice_state(t: torch.Tensor, removed: dict[int, list[int]], shape: torch.Size) -> torch.Tensor:
    if t.shape != shape:
        return t
    for dim, idxs in removed.items():
        keep = [i for i in range(t.shape[dim]) if i not in set(idxs)]
        t = t.index_select(dim, torch.tensor(keep, dtype=torch.long, device=t.device))
    return t.contiguous()


def pruner_step_keeping_optimizer(
    pruner: tp.pruner.BasePruner, model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> None:
    """One ``pruner.step()``; then swap the optimizer's parameters for the pruned ones and slice their state."""
    if optimizer is None:
        pruner.step()
        return
    names = {id(p): n for n, p in model.named_parameters()}
    old = dict(model.named_parameters())
    mod_names = {m: n for n, m in model.named_modules()}
    removed: dict[str, dict[int, list[int]]] = {}
    unknown: set[str] = set()
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            mname = mod_names.get(dep.layer)
            if mname is None:
                continue
            dims = _PARAM_DIMS.get(dep.pruning_fn)
            grouped = getattr(dep.layer, "groups", 1) not in (1, getattr(dep.layer, "in_channels", 1))
            for leaf in ("weight", "bias"):
                pname = f"{mname}.{leaf}" if mname else leaf
                if pname not in old:
                    continue
                if dims is None or (dep.pruning_fn is F.prune_conv_in_channels and grouped):
                    unknown.add(pname)
                elif leaf in dims:
                    removed.setdefault(pname, {}).setdefault(dims[leaf], []).extend(int(i) for i in idxs)
        group.prune()
    new = dict(model.named_parameters())
    for pg in optimizer.param_groups:
        params = []
        for p in pg["params"]:
            name = names.get(id(p))
            q = new.get(name, p) if name is not None else p
            name = name or ""
            if q is not p:
                state = optimizer.state.pop(p, None)
                if state and name not in unknown:
                    optimizer.state[q] = {
                        k: _slice_state(v, removed.get(name, {}), p.shape) if isinstance(v, torch.Tensor) else v
                        for k, v in state.items()
                    }
            params.append(q)
        pg["params"] = params


class PruningSchedule:
    """Prune step by step during training (one-shot, iterative or gradual/AGP).

    Args:
        model: The model being trained (pruned in place).
        example_inputs: Inputs for tracing.
        config: Criterion, target, allocation, sparsity (hybrid/unstructured).
        optimizer: The optimizer to keep consistent (any ``torch.optim`` optimizer).
        kind: ``"one-shot"``, ``"iterative"`` (equal increments) or ``"agp"`` (cubic).
        total_steps: Number of pruning events (ignored for one-shot).
        start: Number of ``step()`` calls before the first event.
        every: ``step()`` calls between events.
        data: Batches for data-driven criteria (statistics re-gathered at each event).
        loss_fn: Loss for Taylor/gradient criteria.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Inputs,
        config: PruneConfig,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        kind: str = "agp",
        total_steps: int = 5,
        start: int = 0,
        every: int = 1,
        data: Iterable[Batch] | None = None,
        loss_fn: LossFn | None = None,
    ) -> None:
        if kind not in SCHEDULES:
            raise ConfigError(f"unknown schedule kind {kind!r}; use one of {sorted(SCHEDULES)}")
        if total_steps < 1 or every < 1 or start < 0:
            raise ConfigError("total_steps and every must be >= 1 and start >= 0")
        self.model, self.example_inputs, self.config, self.optimizer = model, example_inputs, config, optimizer
        self.kind = kind
        self.events = 1 if kind == "one-shot" else total_steps
        self.start, self.every = start, every
        self.loss_fn = loss_fn or nn.functional.cross_entropy
        self.batches = [b for _, b in zip(range(config.data_batches), data, strict=False)] if data is not None else []
        self.calls = 0
        self.done = 0
        self.masks: Masks | None = None
        self.history: list[dict[str, Any]] = []
        self._pruner: tp.pruner.BasePruner | None = None
        if config.method is not Method.UNSTRUCTURED:
            self.importance = make(config.criterion)
            if needs_data(self.importance) and not self.batches:
                raise ConfigError(f"criterion {config.criterion!r} needs data=<a DataLoader>")
            self.plan = self._final_plan()

    def _final_plan(self) -> Plan:
        work = clone(self.model).eval()
        allocator = None
        if self.config.allocation is Allocation.SENSITIVITY and self.config.target.kind is not TargetKind.RATIO:
            if not self.batches:
                raise ConfigError("allocation=sensitivity needs data=<a DataLoader>")
            allocator = sensitivity(work, self.example_inputs, self.batches, self.config, loss_fn=self.loss_fn).allocator()
        if needs_data(self.importance):
            self.importance.collect(work, self.batches, self.loss_fn)
        plan, _ = search_plan(work, self.example_inputs, self.config, self.importance,
                              measure(work, self.example_inputs), allocator=allocator)
        return plan

    @property
    def finished(self) -> bool:
        """Whether every pruning event has happened."""
        return self.done >= self.events

    def step(self) -> bool:
        """Advance the schedule by one call; prune when an event is due. Returns True if it pruned."""
        self.calls += 1
        due = self.calls > self.start and (self.calls - self.start - 1) % self.every == 0
        if self.finished or not due:
            return False
        self.done += 1
        was = self.model.training
        if self.config.method is not Method.UNSTRUCTURED:
            self._structured_event()
        if self.config.method is not Method.STRUCTURED:
            self._unstructured_event()
        self.model.train(was)
        stats = measure(self.model, self.example_inputs)
        self.history.append({"call": self.calls, "event": self.done, **stats.to_dict()})
        return True

    def _structured_event(self) -> None:
        if needs_data(self.importance):
            self.importance.collect(self.model, self.batches, self.loss_fn)
            self.importance.bind(self.model)
        if self._pruner is None:
            self._pruner = make_pruner(
                self.model, self.example_inputs, self.config, self.importance, self.plan,
                steps=self.events, scheduler=_scheduler(self.kind),
            )
        self.model.eval()
        pruner_step_keeping_optimizer(self._pruner, self.model, self.optimizer)
        self.model.zero_grad(set_to_none=True)

    def _unstructured_event(self) -> None:
        cfg = self.config
        final = cfg.target.value if cfg.target.kind is TargetKind.SPARSITY else cfg.sparsity
        sparsity = final * SCHEDULES[self.kind](self.done, self.events)
        if self.masks is not None:
            self.masks.detach()
        self.masks = compute_masks(
            self.model, sparsity, criterion=cfg.criterion if cfg.criterion in ("magnitude", "gradient") else "magnitude",
            scope=cfg.sparsity_scope, ignored=ignored_modules(self.model, cfg), rules=cfg.layer_rules,
            batches=self.batches, loss_fn=self.loss_fn,
        )
        if self.optimizer is not None:
            self.masks.attach(self.optimizer)
