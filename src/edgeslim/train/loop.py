"""ONE training loop: every fine-tune, QAT, alternating and centroid training of edgeslim runs here.

A step is: batch to the device, forward, :class:`~edgeslim.train.losses.Objective` (cross-entropy,
or distillation from a frozen teacher), ``zero_grad``, backward, the callbacks'
``after_backward`` (gradient hooks), ``optimizer.step()``, the LR scheduler, and the callbacks'
``step_end`` (pruning/quantization events, observer freezing, logging). The loader is cycled until
``steps`` are done (a fresh iterator per pass, so a sampler's ``set_epoch`` runs each pass).

Under ``torchrun`` (a process group joined with :func:`edgeslim.distributed.init_from_env`) the
loop checks that every rank starts from the same model, shards the loader with a
``DistributedSampler``, wraps the model in ``DistributedDataParallel``, and at the end copies
rank 0's buffers to every rank and checks that the final weights agree.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgeslim import distributed
from edgeslim.errors import ConfigError
from edgeslim.train.losses import Objective


class EmptyLoaderError(ConfigError):
    """train: the training loader yielded no batches."""


@dataclass
class LoopState:
    """What callbacks see (and may change) during :func:`train_loop`.

    Attributes:
        model: The model being trained; a callback may replace it (the alternating pipeline
            swaps in the QAT-prepared graph) and must then update ``net`` too.
        net: What the batches go through: ``model``, or its ``DistributedDataParallel`` wrapper.
        optimizer: The optimizer.
        device: The training device.
        total: Steps in all.
        step: Optimizer steps done.
        loss: The last step's loss.
        start: ``time.perf_counter()`` when training began.
    """

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device | None
    total: int
    step: int = 0
    loss: float = math.nan
    start: float = field(default_factory=time.perf_counter)


class Callback:
    """Hooks of :func:`train_loop` (override what you need; each does nothing by default)."""

    def before_ddp(self, state: LoopState, loader: Iterable[Any]) -> None:
        """Under torchrun, after the loader is sharded and before ``DistributedDataParallel`` wraps the model."""

    def batch_start(self, state: LoopState) -> None:
        """Before the forward pass of step ``state.step + 1`` (e.g. set the learning rate)."""

    def after_backward(self, state: LoopState) -> None:
        """After ``backward()``, before ``optimizer.step()``: gradients are in ``.grad``."""

    def step_end(self, state: LoopState) -> None:
        """After ``optimizer.step()`` and the LR scheduler; ``state.step`` and ``state.loss`` are updated."""


@dataclass
class LoopResult:
    """What :func:`train_loop` did.

    Attributes:
        steps: Optimizer steps taken.
        mean_loss: Mean loss over the steps.
        seconds: Wall time of the loop.
        world_size: Ranks that trained together (1: one process).
        weights_sha256: sha256 of the final state_dict (checked equal on every rank under torchrun).
        model: The trained model (a callback may have replaced the one given).
    """

    steps: int
    mean_loss: float
    seconds: float
    world_size: int
    weights_sha256: str
    model: nn.Module


def train_mode(model: nn.Module) -> None:
    """The default mode setter: ``model.train()``."""
    model.train()


def train_loop(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    objective: Objective | None = None,
    teacher: nn.Module | None = None,
    device: str | torch.device | None = None,
    callbacks: Sequence[Callback] = (),
    set_mode: Callable[[nn.Module], None] = train_mode,
    seed: int = 0,
    what: str = "the model to train",
    final_what: str = "the trained weights",
) -> LoopResult:
    """Train ``model`` in place for ``steps`` optimizer steps over ``loader`` (cycled).

    Args:
        model: The model; moved to ``device`` when one is given.
        loader: ``(images, labels)`` batches; under torchrun a DataLoader over a map-style dataset.
        steps: Optimizer steps.
        optimizer: Over ``model``'s parameters.
        scheduler: Stepped after every optimizer step.
        objective: The loss (default: plain cross-entropy; distillation when ``teacher`` is given).
        teacher: A frozen model to distil from (put in eval mode, moved to ``device``).
        device: Training device (None: leave the model and batches where they are).
        callbacks: :class:`Callback` hooks, called in order.
        set_mode: Puts the model in training mode once, before the first step.
        seed: Shuffling seed of the ``DistributedSampler`` under torchrun (the same on every rank).
        what: What the model is, in the cross-rank check's message (before training).
        final_what: What the trained model is, in the final check's message.

    Returns:
        A :class:`LoopResult`.

    Raises:
        ConfigError: ``steps < 1``.
        EmptyLoaderError: The loader yielded no batches (a ``ConfigError``).
        edgeslim.distributed.DistributedMismatchError: Under torchrun, the ranks started from
            different models or ended with different weights (names the ranks).
    """
    if steps < 1:
        raise ConfigError(f"train: steps must be >= 1, got {steps}")
    objective = objective or Objective()
    dev = torch.device(device) if device is not None else None
    if dev is not None:
        model.to(dev)
    state = LoopState(model=model, net=model, optimizer=optimizer, device=dev, total=steps)
    if distributed.active():
        distributed.check_same(model, what)
        loader = distributed.distributed_sampler(loader, seed=seed)
        for cb in callbacks:
            cb.before_ddp(state, loader)
        state.net = distributed.wrap_ddp(model, dev)
    if teacher is not None:
        (teacher.to(dev) if dev is not None else teacher).eval()
    set_mode(state.net)
    losses = 0.0
    while state.step < steps:
        seen = 0
        for xb, yb in loader:
            seen += 1
            x, y = (xb.to(dev), yb.to(dev)) if dev is not None else (xb, yb)
            for cb in callbacks:
                cb.batch_start(state)
            out = state.net(x)
            t_out = None
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(x)
            loss = objective(out, y, t_out)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for cb in callbacks:
                cb.after_backward(state)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            state.step += 1
            state.loss = float(loss.detach())
            losses += state.loss
            for cb in callbacks:
                cb.step_end(state)
            if state.step >= steps:
                break
        if seen == 0:
            raise EmptyLoaderError(f"train: the training loader ({type(loader).__name__}) yielded no batches; "
                              "give it at least one (images, labels) batch")
    seconds = time.perf_counter() - state.start
    distributed.sync_buffers(state.model)
    digest = distributed.check_same(state.model, final_what)
    return LoopResult(steps=state.step, mean_loss=losses / state.step, seconds=seconds,
                      world_size=distributed.world_size(), weights_sha256=digest, model=state.model)


class CosineLR(Callback):
    """Sets every parameter group's learning rate to ``lr·(1 + cos(π·step/total))/2`` before each step."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def batch_start(self, state: LoopState) -> None:
        """Set the learning rate of step ``state.step + 1``."""
        for group in state.optimizer.param_groups:
            group["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * state.step / state.total))


class OnStep(Callback):
    """Calls ``fn(step, total, loss)`` after every step (progress bars, logging)."""

    def __init__(self, fn: Callable[[int, int, float], None]) -> None:
        self.fn = fn

    def step_end(self, state: LoopState) -> None:
        """Report the step."""
        self.fn(state.step, state.total, state.loss)


def one_cycle(optimizer: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """The one-cycle schedule of edgeslim's fine-tunes (peak ``lr``, 15 % warm-up)."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)


def nesterov_sgd(params: Iterable[Any], *, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with Nesterov momentum, edgeslim's fine-tune optimizer."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


__all__ = ["Callback", "CosineLR", "EmptyLoaderError", "LoopResult", "LoopState", "OnStep", "nesterov_sgd", "one_cycle", "train_loop",
           "train_mode"]
