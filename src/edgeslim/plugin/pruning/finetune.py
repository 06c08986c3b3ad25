"""``finetune(...)``: a small, honest training recipe for users without one.

SGD (Nesterov) with a one-cycle learning rate, label smoothing, optional knowledge distillation
from the unpruned teacher, and unstructured masks kept through every step; the steps run in
edgeslim's one training loop, :func:`edgeslim.train.train_loop`.

Under ``torchrun`` (a process group joined with :func:`edgeslim.distributed.init_from_env`) the
loop runs data-parallel: every rank must start from the same model (checked), the model is
wrapped in ``DistributedDataParallel``, each rank reads its shard of the data through a
``DistributedSampler`` (``len(train_loader)`` counts batches per rank), and at the end rank 0's
buffers are copied to every rank and the final weights are checked to agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field

import torch
from torch import nn

from edgeslim import distributed
from edgeslim.errors import ConfigError
from edgeslim.plugin.pruning.unstructured import Masks
from edgeslim.train import (
    Callback,
    LoopState,
    Objective,
    OnStep,
    device_of,
    distillation_loss,
    nesterov_sgd,
    one_cycle,
    resolve_torch_device,
    train_loop,
)


@dataclass
class FinetuneResult:
    """Per-epoch history of a fine-tune run."""

    epochs: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    #: Ranks that trained together (1: a single process).
    world_size: int = 1
    #: sha256 of the final state_dict (the same on every rank; checked in a distributed run).
    weights_sha256: str = ""


def finetune(
    model: nn.Module,
    train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: float = 1.0,
    lr: float = 0.02,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    label_smoothing: float = 0.1,
    teacher: nn.Module | None = None,
    kd_alpha: float = 0.7,
    kd_temperature: float = 4.0,
    masks: Masks | None = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> FinetuneResult:
    """Fine-tune ``model`` in place.

    Args:
        model: The (pruned) model.
        train_loader: Batches ``(x, y)``; must have a length (a DataLoader).
        epochs: Passes over ``train_loader``; fractions allowed (0.5 = half an epoch).
        lr: Peak learning rate of the one-cycle schedule.
        weight_decay: SGD weight decay.
        momentum: SGD (Nesterov) momentum.
        label_smoothing: Label smoothing of the cross-entropy.
        teacher: The unpruned model, for knowledge distillation (kept frozen, eval mode).
        kd_alpha: Weight of the distillation term.
        kd_temperature: Softmax temperature of distillation.
        masks: Unstructured masks re-applied after every step.
        eval_fn: Called with the model after each (possibly partial) epoch; its value is logged.
        on_step: Called with ``(step, total_steps, loss)``.
        device: Training device (default: the CPU, or this rank's GPU under torchrun with NCCL).
        seed: Shuffling seed of the ``DistributedSampler`` under torchrun (the same on every rank).

    Returns:
        A :class:`FinetuneResult` with the per-epoch history, world size and final weights' sha256.

    Raises:
        ConfigError: Bad ``epochs``, an empty loader, or (under torchrun) a loader that cannot be sharded.
        edgeslim.distributed.DistributedMismatchError: Under torchrun, the ranks started from
            different models or ended with different weights (the message names the ranks).
    """
    if epochs <= 0:
        raise ConfigError(f"epochs must be > 0, got {epochs}")
    if not isinstance(train_loader, Sized) or len(train_loader) == 0:
        raise ConfigError("train_loader must be a non-empty DataLoader (it needs a length for the LR schedule)")
    if distributed.active():
        train_loader = distributed.distributed_sampler(train_loader, seed=seed)
    dev = resolve_torch_device(device, option="finetune(device=...)") if device is not None else distributed.device()
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    total = max(1, round(epochs * steps_per_epoch))
    home, teacher_home = device_of(model), device_of(teacher) if teacher is not None else None
    model.to(dev)
    opt = nesterov_sgd(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if masks is not None:
        masks.attach(opt)
    result = FinetuneResult(epochs=epochs, seconds=0.0)
    callbacks: list[Callback] = [_History(result, steps_per_epoch, eval_fn)]
    if on_step is not None:
        callbacks.append(OnStep(on_step))
    try:
        done = train_loop(model, train_loader, steps=total, optimizer=opt, scheduler=one_cycle(opt, lr, total),
                          objective=Objective(label_smoothing, kd_alpha, kd_temperature), teacher=teacher, device=dev,
                          callbacks=callbacks, seed=seed, what="the model to fine-tune",
                          final_what="the fine-tuned weights")
    finally:
        if masks is not None:
            masks.detach()
            masks.apply()
    model.eval()
    result.seconds = done.seconds
    result.world_size = done.world_size
    result.weights_sha256 = done.weights_sha256
    model.to(home)
    if teacher is not None and teacher_home is not None:
        teacher.to(teacher_home)
    return result


class _History(Callback):
    """Appends ``{epoch, loss, seconds[, eval]}`` to the result after every (possibly partial) epoch."""

    def __init__(self, result: FinetuneResult, steps_per_epoch: int,
                 eval_fn: Callable[[nn.Module], float] | None) -> None:
        self.result, self.steps_per_epoch, self.eval_fn = result, steps_per_epoch, eval_fn
        self.running, self.n = 0.0, 0

    def step_end(self, state: LoopState) -> None:
        """Close the epoch's entry at an epoch boundary or the last step."""
        self.running += state.loss
        self.n += 1
        if state.step % self.steps_per_epoch and state.step != state.total:
            return
        entry = {"epoch": state.step / self.steps_per_epoch, "loss": self.running / self.n,
                 "seconds": time.perf_counter() - state.start}
        if self.eval_fn is not None:
            entry["eval"] = self.eval_fn(state.model)
            state.net.train()  # the next pass trains again, whatever eval_fn left
        self.result.history.append(entry)
        self.running, self.n = 0.0, 0


__all__ = ["FinetuneResult", "distillation_loss", "finetune"]
