"""The one top-1 evaluation: a hand count on a fixed batch, modes and devices restored."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgeslim.train import count_top1, evaluate, sharded_top1, top1_on


class Fixed(nn.Module):
    """Returns the logits it is given (the 'images' are the logits), so the count can be made by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


# arg-max per row: 0, 2, 1, 3, 0  — labels: 0, 1, 1, 3, 2  → 3 of 5 correct
LOGITS = torch.tensor([[5.0, 1, 0, 0], [0, 1, 4, 0], [0, 3, 1, 0], [0, 0, 1, 2], [9, 0, 0, 8]])
LABELS = torch.tensor([0, 1, 1, 3, 2])
BATCHES = [(LOGITS[:2], LABELS[:2]), (LOGITS[2:], LABELS[2:])]


def test_count_equals_a_hand_count() -> None:
    counts = count_top1(Fixed(), BATCHES)
    assert (counts.correct, counts.total) == (3, 5) and counts.accuracy == pytest.approx(0.6)
    assert count_top1(Fixed(), BATCHES, max_batches=1).accuracy == pytest.approx(0.5)  # rows 0 and 1: 1 of 2
    assert math.isnan(count_top1(Fixed(), []).accuracy)


def test_loss_is_the_summed_cross_entropy() -> None:
    counts = count_top1(Fixed(), BATCHES, with_loss=True)
    assert counts.loss == pytest.approx(float(F.cross_entropy(LOGITS, LABELS)), rel=1e-6)


def test_evaluate_switches_to_eval_and_restores_the_mode() -> None:
    net = nn.Sequential(nn.Dropout(0.9), Fixed()).train()  # in train mode dropout would change the count
    assert evaluate(net, BATCHES) == pytest.approx(0.6)
    assert net.training
    assert top1_on(net.eval(), BATCHES, "cpu") == pytest.approx(0.6)
    assert not net.training


def test_sharded_top1_on_one_process_counts_every_image(test_loader_1k: torch.utils.data.DataLoader,
                                                        resnet18_fmnist: nn.Module) -> None:
    loader = torch.utils.data.DataLoader(test_loader_1k.dataset, batch_size=250)
    acc, n = sharded_top1(resnet18_fmnist, [b for _, b in zip(range(1), loader, strict=False)])
    assert n == 250
    assert acc == pytest.approx(evaluate(resnet18_fmnist, loader, max_batches=1))
    assert acc > 0.85  # the trained reference model on real images
