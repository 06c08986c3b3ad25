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
import itertools
import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule
from torch.nn import functional as F
from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

from edgeslim.errors import ConfigError, EdgeslimError, PruningError
from edgeslim.models import copy_arch
from edgeslim.plugin.pruning.config import Allocation, Method, PruneConfig, TargetKind
from edgeslim.plugin.pruning.finetune import distillation_loss
from edgeslim.plugin.pruning.importance.base import Batch, LossFn
from edgeslim.plugin.pruning.metrics import Inputs, ModelStats, layer_report, measure
from edgeslim.plugin.pruning.schedule import SCHEDULES, PruningSchedule
from edgeslim.plugin.quantization.api import QuantResult, convert, prepare_qat
from edgeslim.plugin.quantization.config import QuantConfig
from edgeslim.plugin.quantization.qat import QATSchedule, bn_frozen, freeze_bn


class AlternatingError(EdgeslimError):
    """The alternating schedule was driven wrongly (stale model or optimizer, finish too early)."""


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
        """A JSON/YAML-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlternatingConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"alternating: unknown config keys {sorted(unknown)}")
        return cls(**data)


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


def _rebind(optimizer: torch.optim.Optimizer, old: nn.Module, new: nn.Module) -> None:
    """Swap ``optimizer``'s parameters from ``old``'s to ``new``'s by name, moving their state."""
    names = {id(p): n for n, p in old.named_parameters()}
    targets = dict(new.named_parameters())
    for group in optimizer.param_groups:
        moved = []
        for p in group["params"]:
            name = names.get(id(p))
            q = targets.get(name) if name is not None else None
            if q is None:
                raise AlternatingError(f"alternating: an optimizer parameter ({name or 'unnamed'}) has no "
                                       f"counterpart in {type(new).__name__}; build the optimizer over model.parameters()")
            state = optimizer.state.pop(p, None)
            if state:
                optimizer.state[q] = {k: v for k, v in state.items()
                                      if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape == q.shape}
            moved.append(q)
        group["params"] = moved


@torch.no_grad()
def _copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy every parameter/buffer of ``dst`` that ``src`` has under the same name and shape."""
    have = src.state_dict()
    for name, t in dst.state_dict().items():
        s = have.get(name)
        if s is not None and s.shape == t.shape:
            t.copy_(s)
        elif name.endswith(("weight", "bias")):
            raise AlternatingError(f"alternating: {name} is missing or reshaped in the prepared graph; please report this model")


def _carry_fake_quant(old: nn.Module, new: nn.Module) -> None:
    """Copy fake-quant state (ranges, enabled flags) from ``old`` to ``new`` where names and shapes match."""
    before = dict(old.named_modules())
    for name, mod in new.named_modules():
        prev = before.get(name)
        if not isinstance(mod, FakeQuantizeBase) or prev is None or type(prev) is not type(mod):
            continue
        sd, want = prev.state_dict(), mod.state_dict()
        if sd.keys() == want.keys() and all(sd[k].shape == want[k].shape for k in sd):
            mod.load_state_dict(sd)


def _keep_bn_frozen(gm: GraphModule) -> None:
    """Make ``gm.train()`` re-freeze BatchNorm (PT2E's train switch would unfreeze it)."""
    base = gm.train

    def _train(self: GraphModule, mode: bool = True) -> GraphModule:
        base(mode)
        if mode:
            freeze_bn(self)
        return self

    gm.train = types.MethodType(_train, gm)  # type: ignore[method-assign]


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
            gm = prepare_qat(self._eager, self._x, self.quant_config)
        _rebind(self.optimizer, self._eager, gm)
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
            _copy_weights(gm, self._eager)
            _rebind(self.optimizer, gm, self._eager)
            self._prune.step()
            if self._prune.masks is not None:
                self._prune.masks.detach()
            shapes = {n: p.shape for n, p in gm.named_parameters()}
            reshaped = any(shapes.get(n) != p.shape for n, p in self._eager.named_parameters())
            if not reshaped:
                _copy_weights(self._eager, gm)
                _rebind(self.optimizer, self._eager, gm)
                return
            new = prepare_qat(self._eager, self._x, self.quant_config)
        _carry_fake_quant(gm, new)
        if bn_frozen(gm):
            freeze_bn(new)
            _keep_bn_frozen(new)
        new.train(gm.training)
        _rebind(self.optimizer, self._eager, new)
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
                assert isinstance(self.model, GraphModule)
                _keep_bn_frozen(self.model)
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
            _copy_weights(self.model, self._eager)
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
        quant = convert(self.model)
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

    Returns:
        An :class:`AlternatingResult`.
    """
    layout = schedule or AlternatingConfig.spread(steps)
    if layout.total_steps != steps:
        raise ConfigError(f"alternating: schedule.total_steps={layout.total_steps} but steps={steps}; make them equal")
    work = copy_arch(model, copy.deepcopy(model)).train()
    opt = torch.optim.SGD(work.parameters(), lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    lrs = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    evals: dict[str, float] = {}
    if layout.qat_from == 0 and eval_fn is not None:
        evals["before_qat"] = eval_fn(work)
    sched = AlternatingSchedule(work, example_inputs, prune_config, quant_config, optimizer=opt,
                                data=train_loader, **layout.to_dict())
    if teacher is not None:
        teacher.eval()
    batches = itertools.chain.from_iterable(itertools.repeat(train_loader))
    for _ in range(steps):
        x, y = next(batches)
        out = sched.model(x)
        if teacher is not None:
            with torch.no_grad():
                t_out = teacher(x)
            loss = distillation_loss(out, t_out, y, kd_alpha, kd_temperature, label_smoothing)
        else:
            loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lrs.step()
        if sched.calls + 1 == layout.qat_from and eval_fn is not None:
            evals["before_qat"] = eval_fn(work)  # the eager model, before the step that prepares QAT
        sched.step(loss)
        if on_step is not None:
            on_step(sched.history[-1])
    result = sched.finish()
    if eval_fn is not None:
        evals["converted"] = eval_fn(result.quant.model)
    return replace(result, evals=evals)
