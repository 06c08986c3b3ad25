"""ONE top-1 evaluation: counts of correct predictions, on one process or sharded over torchrun's ranks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from edgeslim import distributed
from edgeslim.train.device import device_of


@dataclass(frozen=True)
class Top1:
    """Top-1 counts over labelled batches.

    Attributes:
        correct: Images whose arg-max class equals the label.
        total: Images evaluated.
        loss_sum: Summed cross-entropy (0.0 unless asked for).
    """

    correct: int
    total: int
    loss_sum: float = 0.0

    @property
    def accuracy(self) -> float:
        """``correct / total`` as a fraction (NaN without images)."""
        return self.correct / self.total if self.total else float("nan")

    @property
    def loss(self) -> float:
        """Mean cross-entropy (NaN without images)."""
        return self.loss_sum / self.total if self.total else float("nan")


@torch.inference_mode()
def count_top1(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    with_loss: bool = False,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Top1:
    """Count correct top-1 predictions of ``model`` (run as it is: its train/eval mode is not changed).

    Args:
        model: Returns ``[N, C]`` logits.
        batches: ``(images, labels)``.
        device: Where the images go (None: where they are; the model must already be there).
        max_batches: Stop after this many batches.
        with_loss: Also sum the cross-entropy (``Top1.loss``).
        loss_fn: Sum this batch-mean loss instead, weighted by the batch size (``Top1.loss``).

    Returns:
        The :class:`Top1` counts.
    """
    correct = total = 0
    loss = 0.0
    for i, (x, y) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        out = model(x.to(device) if device is not None else x)
        labels = y.to(out.device)
        correct += int((out.argmax(1) == labels).sum())
        total += int(labels.numel())
        if loss_fn is not None:
            loss += float(loss_fn(out, labels)) * int(labels.numel())
        elif with_loss:
            loss += float(F.cross_entropy(out, labels, reduction="sum"))
    return Top1(correct, total, loss)


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    max_batches: int | None = None,
    device: str | torch.device = "cpu",
) -> float:
    """Top-1 accuracy of ``model`` over ``loader``, as a fraction in [0, 1].

    The model is put in eval mode and on ``device`` for the measurement; its previous mode and
    device are restored.

    Args:
        model: The classifier.
        loader: ``(images, labels)`` batches.
        max_batches: Evaluate only the first batches.
        device: Where the model and the images go.

    Returns:
        The fraction of correct predictions (NaN without images).
    """
    home = device_of(model)
    model.to(device)
    try:
        return _eval_counts(model, loader, torch.device(device), max_batches).accuracy
    finally:
        model.to(home)


def top1_on(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            device: str | torch.device | None = None) -> float:
    """Top-1 of ``model`` (run as it is) with model and images on ``device``; the model goes back where it was.

    Args:
        model: The classifier.
        batches: ``(images, labels)``.
        device: Evaluation device (None: where the model is).

    Returns:
        The fraction of correct predictions (NaN without images).
    """
    if device is None:
        return count_top1(model, batches, device=device_of(model)).accuracy
    home = device_of(model)
    model.to(device)
    try:
        return count_top1(model, batches, device=device).accuracy
    finally:
        model.to(home)


def sharded_top1(model: nn.Module, loader: Any, *, device: str | torch.device | None = None) -> tuple[float, int]:
    """Top-1 and the image count; under torchrun each rank evaluates every ``world_size``-th image and the counts are summed.

    Args:
        model: The classifier (a DDP wrapper is looked through); on ``device`` for the count, then moved back.
        loader: A DataLoader (sharded when it has a map-style dataset) or any iterable of batches.
        device: Evaluation device (None: this rank's, :func:`edgeslim.distributed.device`).

    Returns:
        ``(top1 fraction, images evaluated over all ranks)``.
    """
    from torch.utils.data import DataLoader, Subset

    dev = torch.device(device) if device is not None else distributed.device()
    net = distributed.unwrap(model)
    home = device_of(net)
    net.to(dev)
    try:
        dataset = getattr(loader, "dataset", None)
        if distributed.active() and isinstance(loader, DataLoader) and dataset is not None and hasattr(dataset, "__len__"):
            mine = range(distributed.rank(), len(dataset), distributed.world_size())
            part = DataLoader(Subset(dataset, mine), batch_size=loader.batch_size, shuffle=False)
            counts = _eval_counts(net, part, dev) if mine else Top1(0, 0)
            correct, total = distributed.all_sum([counts.correct, counts.total])
            return (correct / total if total else float("nan")), int(total)
        counts = _eval_counts(net, loader, dev)
        return counts.accuracy, counts.total
    finally:
        net.to(home)


def _eval_counts(model: nn.Module, loader: Any, device: torch.device, max_batches: int | None = None) -> Top1:
    """:func:`count_top1` in eval mode, the model's previous mode restored."""
    was_training = model.training
    model.eval()
    try:
        return count_top1(model, loader, device=device, max_batches=max_batches)
    finally:
        model.train(was_training)


__all__ = ["Top1", "count_top1", "evaluate", "sharded_top1", "top1_on"]
