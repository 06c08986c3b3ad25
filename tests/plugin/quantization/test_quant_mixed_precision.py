"""Mixed precision: sensitivity, size budget (greedy and knapsack), accuracy budget, unreachable budget."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeslim.plugin.quantization.errors import QuantizationError
from edgeslim.plugin.quantization.mixed_precision import (
    DEFAULT_CANDIDATES,
    _fake_weight,
    _loss_and_top1,
    search,
    weighted_layers,
)

X = torch.zeros(2, 3, 32, 32)


@pytest.fixture(scope="module")
def batches(calib_256: torch.utils.data.DataLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = next(iter(calib_256))
    return [(x[:32], y[:32])]


def test_size_budget_greedy_and_knapsack(resnet18_fmnist: torch.nn.Module, batches: list) -> None:
    greedy = search(resnet18_fmnist, X, batches, budget_fraction=1 / 6, eval_batches=1)
    assert greedy.weight_bytes <= greedy.float_bytes / 6
    assert len(greedy.choice) == 21 and len(set(greedy.choice.values())) >= 2
    assert greedy.config.for_layer("layer4.1.conv2").weight is not None
    knap = search(resnet18_fmnist, X, batches, budget_fraction=1 / 6, method="knapsack", sensitivities=greedy.table)
    assert knap.weight_bytes <= knap.float_bytes / 6
    by = {(s.layer, s.candidate): s.loss_increase for s in greedy.table}
    total = lambda c: sum(by[(k, v)] for k, v in c.items())  # noqa: E731
    assert total(knap.choice) <= total(greedy.choice) + 1e-6


    sq = {(s.layer, s.candidate): s.sqnr_db for s in greedy.table}
    assert all(sq[(n, "affine:8")] > sq[(n, "codebook:2")] + 20 for n, _ in sq)
    # an accuracy budget of zero keeps every layer at the most precise candidate that costs no accuracy
    strict = search(resnet18_fmnist, X, batches, max_accuracy_drop=0.0, sensitivities=greedy.table)
    model = copy.deepcopy(resnet18_fmnist)
    _, top0 = _loss_and_top1(model, batches)
    specs = {f"{c.scheme}:{c.bits}": c for c in DEFAULT_CANDIDATES}
    with torch.no_grad():
        for name, mod in weighted_layers(model).items():
            mod.weight.copy_(_fake_weight(mod.weight, specs[strict.choice[name]]))
    assert _loss_and_top1(model, batches)[1] >= top0
    assert strict.weight_bytes < strict.float_bytes / 4


def test_unreachable_budget_says_what_is_reachable(resnet18_fmnist: torch.nn.Module, batches: list) -> None:
    with pytest.raises(QuantizationError, match="smallest choice needs"):
        search(resnet18_fmnist, X, batches, budget_fraction=0.01, eval_batches=1)
