"""``finetune(...)``: a small, honest training loop for users without one.

SGD (Nesterov) with a one-cycle learning rate, label smoothing, optional knowledge distillation
from the unpruned teacher, and unstructured masks kept through every step.

Under ``torchrun`` (a process group joined with :func:`edgeslim.distributed.init_from_env`) the
same loop runs data-parallel: every rank must start from the same model (checked), the model is
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
from torch.nn import functional as F

from edgeslim import distributed
from edgeslim.errors import ConfigError
from edgeslim.plugin.pruning.unstructured import Masks


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


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
    alpha: float = 0.5, temperature: float = 4.0, label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``(1-α)·CE(student, y) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))`` (Hinton et al., 2015)."""
    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    kd = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean", log_target=True,
    ) * temperature**2
    return (1 - alpha) * ce + alpha * kd


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
        distributed.check_same(model, "the model to fine-tune")
        train_loader = distributed.distributed_sampler(train_loader, seed=seed)
    device = device if device is not None else distributed.device()
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    total = max(1, round(epochs * steps_per_epoch))
    model.to(device)
    net = distributed.wrap_ddp(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    if masks is not None:
        masks.attach(opt)
    if teacher is not None:
        teacher.to(device).eval()
    result = FinetuneResult(epochs=epochs, seconds=0.0)
    start = time.perf_counter()
    step, running, n = 0, 0.0, 0
    try:
        while step < total:
            net.train()
            for xb, yb in train_loader:
                x, y = xb.to(device), yb.to(device)
                out = net(x)
                if teacher is not None:
                    with torch.no_grad():
                        t_out = teacher(x)
                    loss = distillation_loss(out, t_out, y, kd_alpha, kd_temperature, label_smoothing)
                else:
                    loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                running += float(loss.detach())
                n += 1
                if on_step:
                    on_step(step, total, float(loss.detach()))
                if step % steps_per_epoch == 0 or step == total:
                    entry = {"epoch": step / steps_per_epoch, "loss": running / n,
                             "seconds": time.perf_counter() - start}
                    if eval_fn is not None:
                        entry["eval"] = eval_fn(model)
                    result.history.append(entry)
                    running, n = 0.0, 0
                if step >= total:
                    break
    finally:
        if masks is not None:
            masks.detach()
            masks.apply()
    model.eval()
    result.seconds = time.perf_counter() - start
    result.world_size = distributed.world_size()
    distributed.sync_buffers(model)
    result.weights_sha256 = distributed.check_same(model, "the fine-tuned weights")
    return result
