"""Pruning events and quantization-aware training interleaved in one training run.

::

    sched = AlternatingSchedule(model, x, PruneConfig(target=Target.parse("params=0.5")), "int8",
                                optimizer=opt, total_steps=600, qat_from=200, prune_steps=4, prune_every=100)
    for step in range(600):
        xb, yb = next(batches)
        loss = F.cross_entropy(sched.model(xb), yb)      # sched.model, NOT model: it changes
        opt.zero_grad(); loss.backward(); opt.step()      # the same optimizer all along
        sched.step(loss)
    result = sched.finish()                               # converted int8 model + prune summary

**Read this before using it.** torch-pruning works on eager modules only (on a PT2E-prepared
graph it finds no prunable groups), so a pruning event during QAT is done honestly in four moves:
the prepared graph's weights (same parameter names as the eager model) are copied back into the
eager model, the optimizer is moved onto the eager parameters, :class:`PruningSchedule` prunes
the eager model and slices the optimizer state to the surviving channels, and the pruned model
is prepared for QAT again (activation fake-quant ranges carried over by name; weight ranges are
re-observed, which is why every structural event must come before the observers freeze). Hence:

* ``sched.model`` is the model to train: the eager model until ``qat_from``, then a prepared
  ``GraphModule`` that is replaced at every structural event during QAT. Forwarding the old
  eager model after the switch raises :class:`AlternatingError`.
* ``sched.optimizer`` is the optimizer you passed, **the same object** throughout: its
  parameters are swapped in place (by parameter name) and its state (momentum, Adam moments)
  moved or sliced with them, so an LR scheduler built on it keeps working. Calling
  ``sched.step()`` without having stepped that optimizer since the last call (e.g. stepping a
  second optimizer built over the old model) raises :class:`AlternatingError`.
* Unstructured / hybrid masks are re-applied, by parameter name, to whichever model is current
  after every optimizer step; sparsity events may fall before or during QAT.
* Observers and BatchNorm freeze at ``freeze_observers_at`` / ``freeze_bn_at`` (a
  :class:`QATSchedule`); BatchNorm stays frozen across ``.train()`` / ``.eval()`` calls.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule

from edgeslim.errors import ConfigError, PruningError
from edgeslim.models import copy_arch
from edgeslim.pipelines.alternating_config import (
    AlternatingConfig,
    AlternatingError,
    AlternatingResult,
    PruneSummary,
    StepRecord,
    check_prune_config,
)
from edgeslim.pipelines.alternating_state import carry_fake_quant, copy_weights, rebind_optimizer
from edgeslim.plugin.pruning.config import Method, PruneConfig
from edgeslim.plugin.pruning.importance.base import Batch, LossFn
from edgeslim.plugin.pruning.metrics import Inputs, layer_report, measure
from edgeslim.plugin.pruning.schedule import PruningSchedule
from edgeslim.plugin.quantization.api import convert, prepare_qat
from edgeslim.plugin.quantization.config import QuantConfig
from edgeslim.plugin.quantization.qat import QATSchedule, bn_frozen, freeze_bn
from edgeslim.train import (
    Callback,
    LoopState,
    Objective,
    OnDevice,
    device_of,
    resolve_torch_device,
    to_device,
    train_loop,
)


class AlternatingSchedule:
    """Drive structured/unstructured pruning and QAT from one training loop (see the module docstring).

    Args:
        model: The eager float model; pruned in place (afterwards stale: train ``sched.model``).
        example_inputs: Inputs for tracing, counting and ``torch.export``.
        prune_config: What to prune (``method``, ``target``, ``sparsity`` ...).
        quant_config: A :class:`QuantConfig` or a spec string (``"int8"``).
        optimizer: Any ``torch.optim`` optimizer over ``model.parameters()``; kept and re-pointed.
        total_steps, qat_from, prune_steps, prune_every, prune_start, kind, freeze_bn_at,
            freeze_observers_at: The step layout, see :class:`AlternatingConfig`.
        data: Batches for data-driven criteria / sensitivity allocation.
        loss_fn: Loss for those criteria (default cross-entropy).

    Raises:
        ConfigError: Contradictory layout or pruning options, or an optimizer that does not hold
            exactly ``model``'s parameters (raised before any work).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Inputs,
        prune_config: PruneConfig,
        quant_config: QuantConfig | str,
        *,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        qat_from: int,
        prune_steps: int = 5,
        prune_every: int = 1,
        prune_start: int = 0,
        kind: str = "agp",
        freeze_bn_at: int | None = None,
        freeze_observers_at: int | None = None,
        data: Iterable[Batch] | None = None,
        loss_fn: LossFn | None = None,
    ) -> None:
        check_prune_config(prune_config)
        self.config = AlternatingConfig(total_steps, qat_from, prune_steps, prune_every, prune_start, kind,
                                        freeze_bn_at, freeze_observers_at)
        self.quant_config = QuantConfig.from_spec(quant_config) if isinstance(quant_config, str) else quant_config
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if not held or not held <= {id(p) for p in model.parameters()}:
            raise ConfigError("alternating: the optimizer must be built over model.parameters() of the model passed in")
        cfg = self.config
        if prune_config.method is not Method.UNSTRUCTURED and cfg.freeze_observers_at is not None:
            late = [s for s in cfg.prune_events() if s > cfg.qat_from and s >= cfg.freeze_observers_at]
            if late:
                raise ConfigError(f"alternating: structural pruning at step {late[0]} comes after the observers freeze "
                                  f"(step {cfg.freeze_observers_at}); the re-prepared weights need live observers — "
                                  "freeze them later or prune earlier")
        self.model: nn.Module = model
        self.optimizer = optimizer
        self.example_inputs = example_inputs
        self.phase = "float"
        self.calls = 0
        self.history: list[StepRecord] = []
        self._eager = model
        self._x = example_inputs
        self._before = measure(model, example_inputs)
        self._arch = copy.deepcopy(model).to("meta")  # widths only, for the per-layer report
        # timing is ours (_due): the pruning schedule prunes at each of its step() calls
        self._prune = PruningSchedule(model, example_inputs, prune_config, optimizer=optimizer, kind=kind,
                                      total_steps=prune_steps, data=data, loss_fn=loss_fn)
        self._qat = QATSchedule(
            None if cfg.freeze_observers_at is None else cfg.freeze_observers_at - cfg.qat_from,
            None if cfg.freeze_bn_at is None else cfg.freeze_bn_at - cfg.qat_from,
        )
        self._stepped = 0
        self._seen = 0
        self._guard: Any = None
        self._done = False
        self._hook = optimizer.register_step_post_hook(self._after_optimizer_step)
        if cfg.qat_from == 0:
            self._switch()

    def _after_optimizer_step(self, *_: Any) -> None:
        self._stepped += 1
        self._apply_masks()

    @torch.no_grad()
    def _apply_masks(self) -> None:
        masks = self._prune.masks
        if masks is None:
            return
        params = dict(self.model.named_parameters())
        for name, mask in masks.masks.items():
            p = params.get(name)
            if p is None or p.shape != mask.shape:
                raise PruningError(f"alternating: mask for {name!r} does not match {type(self.model).__name__}; please report")
            p.mul_(mask.to(p.dtype))

    def _stale(self, *_: Any) -> None:
        raise AlternatingError(
            f"alternating: this eager model was replaced by its QAT-prepared graph at step {self.config.qat_from}; "
            "forward sched.model instead (sched.optimizer already holds its parameters)"
        )

    @contextmanager
    def _unguarded(self) -> Iterator[None]:
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.remove()
        try:
            yield
        finally:
            if guard is not None:
                self._guard = self._eager.register_forward_pre_hook(self._stale)

    def _switch(self) -> None:
        with self._unguarded():
            gm = prepare_qat(self._eager, self._x, self.quant_config).to(device_of(self._eager))  # its fake-quants too
        rebind_optimizer(self.optimizer, self._eager, gm)
        self.model, self.phase = gm, "qat"
        self._guard = self._eager.register_forward_pre_hook(self._stale)
        self._apply_masks()

    def _prune_event(self) -> None:
        if self.phase == "float":
            self._prune.step()
            if self._prune.masks is not None:
                self._prune.masks.detach()  # our own hook applies them to whichever model is current
            return
        gm = self.model
        assert isinstance(gm, GraphModule)
        with self._unguarded():
            copy_weights(gm, self._eager)
            rebind_optimizer(self.optimizer, gm, self._eager)
            self._prune.step()
            if self._prune.masks is not None:
                self._prune.masks.detach()
            shapes = {n: p.shape for n, p in gm.named_parameters()}
            reshaped = any(shapes.get(n) != p.shape for n, p in self._eager.named_parameters())
            if not reshaped:
                copy_weights(self._eager, gm)
                rebind_optimizer(self.optimizer, self._eager, gm)
                return
            new = prepare_qat(self._eager, self._x, self.quant_config).to(device_of(self._eager))
        carry_fake_quant(gm, new)
        if bn_frozen(gm):
            freeze_bn(new)  # stays frozen through new.train() (see enable_train_eval)
        new.train(gm.training)
        rebind_optimizer(self.optimizer, self._eager, new)
        self.model = new

    def _due(self) -> bool:
        return self.calls in self.config.prune_events() and not self._prune.finished

    def step(self, loss: float | torch.Tensor | None = None) -> bool:
        """Call once after each ``sched.optimizer.step()``; returns True if the model changed.

        Args:
            loss: The step's loss, recorded in the history.

        Raises:
            AlternatingError: ``sched.optimizer`` was not stepped since the last call, the run is
                over (``total_steps`` reached or :meth:`finish` called).
        """
        if self._done or self.calls >= self.config.total_steps:
            raise AlternatingError(f"alternating: all {self.config.total_steps} steps are done; call finish()")
        if self._stepped == self._seen:
            raise AlternatingError(
                "alternating: sched.step() was called but sched.optimizer has not stepped since the last call — "
                "are you stepping another (stale) optimizer? Step the one you passed in (sched.optimizer); it "
                "holds the current model's parameters"
            )
        self._seen = self._stepped
        self.calls += 1
        events: list[str] = []
        params = None
        if self._due():
            self._prune_event()
            events.append("prune")
            params = int(self._prune.history[-1]["params"])
        if self.calls == self.config.qat_from:
            self._switch()
            events.append("prepare_qat")
        elif self.phase == "qat":
            self._qat.step(self.model)
            if self._qat.steps == self._qat.freeze_observers_after:
                events.append("freeze_observers")
            if self._qat.steps == self._qat.freeze_bn_after:
                events.append("freeze_bn")
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else loss
        self.history.append(StepRecord(self.calls, self.phase, value, tuple(events), params))
        return "prune" in events or "prepare_qat" in events

    def finish(self) -> AlternatingResult:
        """Convert the QAT graph and summarise; the schedule is then spent.

        Raises:
            AlternatingError: Called before QAT started or before every pruning event happened.
        """
        if self._done:
            raise AlternatingError("alternating: finish() was already called; use its result")
        if self.phase != "qat":
            raise AlternatingError(f"alternating: finish() at step {self.calls}, before QAT starts at step "
                                   f"{self.config.qat_from}; train on or lower qat_from")
        if not self._prune.finished:
            raise AlternatingError(f"alternating: finish() at step {self.calls} after {self._prune.done} of "
                                   f"{self._prune.events} pruning events; train to step {self.config.prune_events()[-1]}")
        self._apply_masks()
        with self._unguarded():
            copy_weights(self.model, self._eager)
            after = measure(self._eager, self._x)
            layers = tuple(layer_report(self._arch, self._eager))
        if self._guard is not None:
            self._guard.remove()
        self._hook.remove()
        self._done = True
        masks = self._prune.masks
        summary = PruneSummary(self._before, after, layers, 0.0 if masks is None else masks.sparsity(),
                               tuple(self._prune.history))
        assert isinstance(self.model, GraphModule)
        quant = convert(self.model.cpu())  # the converted model (and the eager one) on the CPU, ready to export
        self._eager.cpu()
        return AlternatingResult(quant, summary, tuple(self.history), self.config, self._eager.eval(), {})


def alternating(
    model: nn.Module,
    example_inputs: Inputs,
    train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    prune_config: PruneConfig,
    quant_config: QuantConfig | str,
    *,
    steps: int,
    schedule: AlternatingConfig | None = None,
    teacher: nn.Module | None = None,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.1,
    kd_alpha: float = 0.7,
    kd_temperature: float = 4.0,
    eval_fn: Callable[[nn.Module], float] | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
    device: str | torch.device | None = None,
) -> AlternatingResult:
    """Prune and quantization-aware-train ``model`` in one run (SGD Nesterov, one-cycle LR).

    Args:
        model: The float model (not modified; a copy is trained).
        example_inputs: Inputs for tracing and ``torch.export``.
        train_loader: ``(x, y)`` batches, cycled; its first batches also feed data-driven criteria.
        prune_config: What to prune.
        quant_config: A :class:`QuantConfig` or spec string.
        steps: Optimizer steps in all.
        schedule: The step layout (default :meth:`AlternatingConfig.spread`).
        teacher: A float model to distil from (e.g. ``model`` itself), as in ``finetune``.
        lr, momentum, weight_decay, label_smoothing: SGD (Nesterov, peak LR) and cross-entropy settings.
        kd_alpha, kd_temperature: Distillation weight and temperature (with ``teacher``).
        eval_fn: Called with the model just before QAT starts and with the converted model;
            the values land in ``result.evals``.
        on_step: Called with each :class:`StepRecord`.
        device: Where training, pruning and QAT run (``auto``, ``cpu``, ``cuda``, ``cuda:N``; None: where
            ``model`` is); the result's models are on the CPU, ``teacher`` is moved back.

    Returns:
        An :class:`AlternatingResult`.
    """
    layout = schedule or AlternatingConfig.spread(steps)
    if layout.total_steps != steps:
        raise ConfigError(f"alternating: schedule.total_steps={layout.total_steps} but steps={steps}; make them equal")
    dev = resolve_torch_device(device, option="alternating(device=...)") if device is not None else device_of(model)
    work = copy_arch(model, copy.deepcopy(model)).train().to(dev)
    x, data = to_device(example_inputs, dev), OnDevice(train_loader, dev)  # for tracing and data-driven criteria
    teacher_home = device_of(teacher) if teacher is not None else None
    opt = torch.optim.SGD(work.parameters(), lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    lrs = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    evals: dict[str, float] = {}
    if layout.qat_from == 0 and eval_fn is not None:
        evals["before_qat"] = eval_fn(work)
    sched = AlternatingSchedule(work, x, prune_config, quant_config, optimizer=opt, data=data, **layout.to_dict())
    events = _Events(sched, layout.qat_from, evals, eval_fn, on_step)
    train_loop(work, train_loader, steps=steps, optimizer=opt, scheduler=lrs, device=dev if device is not None else None,
               objective=Objective(label_smoothing, kd_alpha, kd_temperature), teacher=teacher, callbacks=[events],
               what="the model to prune and quantize", final_what="the pruned QAT weights")
    if teacher is not None and teacher_home is not None:
        teacher.to(teacher_home)
    result = sched.finish()
    if eval_fn is not None:
        evals["converted"] = eval_fn(result.quant.model)
    return replace(result, evals=evals)


class _Events(Callback):
    """Drives the :class:`AlternatingSchedule` from :func:`edgeslim.train.train_loop`.

    Its pruning and QAT events happen after each optimizer step; the loop then trains
    ``sched.model`` (which they replace).
    """

    def __init__(self, sched: AlternatingSchedule, qat_from: int, evals: dict[str, float],
                 eval_fn: Callable[[nn.Module], float] | None, on_step: Callable[[StepRecord], None] | None) -> None:
        self.sched, self.qat_from, self.evals, self.eval_fn, self.on_step = sched, qat_from, evals, eval_fn, on_step

    def step_end(self, state: LoopState) -> None:
        """Evaluate before QAT when it is due, run the schedule's event, and train its current model."""
        if self.sched.calls + 1 == self.qat_from and self.eval_fn is not None:
            self.evals["before_qat"] = self.eval_fn(state.model)  # the eager model, before the step that prepares QAT
        self.sched.step(state.loss)
        state.model = state.net = self.sched.model
        if self.on_step is not None:
            self.on_step(self.sched.history[-1])


__all__ = ["AlternatingConfig", "AlternatingError", "AlternatingResult", "AlternatingSchedule", "PruneSummary",
           "StepRecord", "alternating", "check_prune_config"]
