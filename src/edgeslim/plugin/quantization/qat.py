"""Quantization-aware training helpers: a schedule that freezes observers and BatchNorm after N steps.

Drop-in use inside your own loop::

    qmodel = prepare_qat(model, x, "int8")
    sched = QATSchedule(freeze_observers_after=200, freeze_bn_after=150)
    opt = torch.optim.SGD(qmodel.parameters(), lr=1e-3, momentum=0.9)
    for x, y in loader:
        loss = F.cross_entropy(qmodel(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        sched.step(qmodel)
    result = convert(qmodel)

:func:`train_qat` runs :func:`edgeslim.train.train_loop` (the loop every edgeslim training uses)
with :func:`qat_callbacks`; distillation is :func:`edgeslim.train.distillation_loss` with
``alpha=0.5`` (the same half-and-half mix as the earlier hand-written one, now one function).
Under ``torchrun`` (process group joined with :func:`edgeslim.distributed.init_from_env`)
it runs data-parallel: the prepared graph must be the same on every rank
(checked), it is wrapped in ``DistributedDataParallel``, each rank reads its shard through a
``DistributedSampler``, and at the end rank 0's buffers (ranges, BatchNorm statistics) are
copied to every rank and the final weights are checked to agree.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

from edgeslim import distributed
from edgeslim.plugin.quantization.errors import QuantConfigError
from edgeslim.plugin.quantization.modes import set_batch_norm_training
from edgeslim.train import (
    Callback,
    CosineLR,
    EmptyLoaderError,
    LoopState,
    Objective,
    OnStep,
    device_of,
    resolve_torch_device,
    train_loop,
)


def freeze_observers(model: nn.Module) -> int:
    """Stop every observer/fake-quant of ``model`` from updating its ranges; returns how many."""
    n = 0
    for mod in model.modules():
        if isinstance(mod, FakeQuantizeBase):
            mod.disable_observer()
            n += 1
    return n


#: The prepared QAT graphs whose BatchNorm :func:`freeze_bn` froze (a side table, not an attribute).
_BN_FROZEN: weakref.WeakSet[torch.fx.GraphModule] = weakref.WeakSet()


def freeze_bn(model: torch.fx.GraphModule) -> None:
    """Use BatchNorm running statistics (and stop updating them) in a prepared QAT graph."""
    set_batch_norm_training(model, False)
    _BN_FROZEN.add(model)


def bn_frozen(model: nn.Module) -> bool:
    """Whether :func:`freeze_bn` froze ``model``'s BatchNorm."""
    return isinstance(model, torch.fx.GraphModule) and model in _BN_FROZEN


@dataclass
class QATSchedule:
    """Freezes observers and BatchNorm statistics after a number of optimizer steps.

    Attributes:
        freeze_observers_after: Steps after which quantization ranges stop moving (None: never).
        freeze_bn_after: Steps after which BatchNorm uses its running statistics (None: never).
    """

    freeze_observers_after: int | None = None
    freeze_bn_after: int | None = None
    steps: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        for name in ("freeze_observers_after", "freeze_bn_after"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise QuantConfigError(f"QATSchedule.{name} must be >= 0, got {v}")

    def step(self, model: nn.Module) -> None:
        """Call once after each optimizer step."""
        self.steps += 1
        if self.freeze_observers_after is not None and self.steps == self.freeze_observers_after:
            freeze_observers(model)
        if self.freeze_bn_after is not None and self.steps == self.freeze_bn_after and isinstance(model, torch.fx.GraphModule):
            freeze_bn(model)


class _SizeObservers(Callback):
    """One forward pass (no gradient) before ``DistributedDataParallel`` wraps the graph.

    Per-channel fake-quants resize their scale/zero-point buffers on their first forward, which
    fails (``Trying to resize storage that is not resizable``) once DDP has synchronised the
    buffers; after this pass they have their final shapes (DDP then copies rank 0's values).
    """

    def before_ddp(self, state: LoopState, loader: Iterable[Any]) -> None:
        """Run the first batch through the prepared graph."""
        first = next(iter(getattr(loader, "loader", loader)), None)
        if first is None:
            raise QuantConfigError("the QAT training loader yielded no batches")
        dev = state.device or torch.device("cpu")
        with torch.no_grad():
            state.model.train()
            state.model(first[0].to(dev))


class _Freeze(Callback):
    """Steps the :class:`QATSchedule` after every optimizer step (observers and BatchNorm freezing)."""

    def __init__(self, schedule: QATSchedule) -> None:
        self.schedule = schedule

    def step_end(self, state: LoopState) -> None:
        """Advance the schedule."""
        self.schedule.step(state.model)


def qat_callbacks(steps: int, schedule: QATSchedule | None = None) -> list[Callback]:
    """The hooks a prepared PT2E graph needs in :func:`edgeslim.train.train_loop`.

    Args:
        steps: Optimizer steps of the run.
        schedule: Observer/BN freezing; default: observers after 3/4 of the steps, BN after 1/2.

    Returns:
        Sizing of per-channel observers before DDP, then the freezing schedule.
    """
    sched = schedule or QATSchedule(freeze_observers_after=max(steps * 3 // 4, 1), freeze_bn_after=max(steps // 2, 1))
    return [_SizeObservers(), _Freeze(sched)]


def train_qat(
    prepared: torch.fx.GraphModule,
    loader: Iterable[Any],
    *,
    steps: int,
    lr: float = 1e-4,
    schedule: QATSchedule | None = None,
    on_step: Callable[[int, float], None] | None = None,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    cosine: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> float:
    """A minimal QAT recipe (SGD + momentum, cross-entropy) for ``steps`` batches; returns the mean loss.

    The steps run in edgeslim's one training loop, :func:`edgeslim.train.train_loop`; your own
    loop works just as well.

    Args:
        prepared: From :func:`~edgeslim.plugin.quantization.api.prepare_qat`.
        loader: ``(images, labels)`` batches; cycled until ``steps`` are done.
        steps: Optimizer steps.
        lr: (Peak) learning rate.
        schedule: Observer/BN freezing; default: observers after 3/4 of the steps, BN after 1/2.
        on_step: Called with ``(step, loss)`` after each step.
        teacher: A float model to distil from with
            :func:`~edgeslim.train.distillation_loss` (``alpha=0.5`` at ``temperature``:
            half cross-entropy, half ``T²·KL``); the usual teacher is the model before quantization.
        temperature: Distillation temperature.
        cosine: Cosine-decay the learning rate from ``lr`` to 0 over ``steps``.
        seed: Shuffling seed of the ``DistributedSampler`` under torchrun (the same on every rank).
        device: Training device (None: this rank's under torchrun with NCCL, else the CPU). The
            graph and the teacher are moved back where they were afterwards.

    Raises:
        QuantConfigError: ``steps < 1`` or a loader that yields no batches.
        edgeslim.distributed.DistributedMismatchError: Under torchrun, the ranks started from
            different prepared graphs or ended with different weights (names the ranks).
    """
    if steps < 1:
        raise QuantConfigError(f"train_qat needs steps >= 1, got {steps}")
    dev = resolve_torch_device(device, option="train_qat(device=...)") if device is not None else distributed.device()
    home, teacher_home = device_of(prepared), device_of(teacher) if teacher is not None else None
    opt = torch.optim.SGD([p for p in prepared.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    callbacks = qat_callbacks(steps, schedule)
    if cosine:
        callbacks.insert(0, CosineLR(lr))
    if on_step is not None:
        callbacks.append(OnStep(lambda s, _total, loss: on_step(s, loss)))
    try:
        done = train_loop(prepared, loader, steps=steps, optimizer=opt, objective=Objective(0.0, 0.5, temperature),
                          teacher=teacher, device=dev, callbacks=callbacks, seed=seed,
                          what="the QAT-prepared model", final_what="the QAT weights")
    except EmptyLoaderError as exc:
        raise QuantConfigError(f"QAT: {exc}") from None
    prepared.to(home)
    if teacher is not None and teacher_home is not None:
        teacher.to(teacher_home)
    return done.mean_loss


__all__ = ["QATSchedule", "bn_frozen", "freeze_bn", "freeze_observers", "qat_callbacks", "train_qat"]
