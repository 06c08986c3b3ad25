import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from edgeslim.errors import PruningError
from edgeslim.plugin.pruning.importance import IMPORTANCE, make, needs_data


def _groups(model: nn.Module, x: torch.Tensor) -> list:
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    return list(dg.get_all_groups(ignored_layers=[model.fc], root_module_types=[nn.Conv2d, nn.Linear]))


def test_all_criteria_registered() -> None:
    assert {"l1", "l2", "bn_scale", "taylor", "activation", "apoz", "random"} <= set(IMPORTANCE.names())


def _batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("name", ["l1", "l2", "bn_scale", "taylor", "activation", "apoz", "random"])
def test_scores_one_per_channel(name: str, small_net: nn.Module, x32: torch.Tensor) -> None:
    imp = make(name)
    if needs_data(imp):
        imp.collect(small_net, _batches(), nn.functional.cross_entropy)
        imp.bind(small_net)
    for group in _groups(small_net, x32):
        scores = imp(group)
        assert scores is not None and scores.shape == (len(group[0].idxs),)
        assert torch.isfinite(scores).all()


def test_l1_ranks_by_filter_norm(small_net: nn.Module, x32: torch.Tensor) -> None:
    with torch.no_grad():
        small_net.a[0].weight[5].mul_(0.0)  # channel 5 of conv a: zero filter
        small_net.a[1].weight[5] = 0.0
        small_net.b[0].weight[:, 5].mul_(0.0)
    group = next(g for g in _groups(small_net, x32) if g[0].dep.target.module is small_net.a[0])
    scores = make("l1")(group)
    assert int(scores.argmin()) == 5


def test_taylor_needs_collect_and_leaves_grads(small_net: nn.Module) -> None:
    imp = make("taylor")
    with pytest.raises(PruningError, match="before collect"):
        imp.bind(small_net)
    imp.collect(small_net, _batches(), nn.functional.cross_entropy)
    assert all(p.grad is None for p in small_net.parameters())  # caller's grads untouched
    clone = copy.deepcopy(small_net)
    imp.bind(clone)
    assert all(p.grad is not None for p in clone.parameters())


def test_apoz_differs_from_mean_activation(small_net: nn.Module) -> None:
    a, b = make("activation"), make("apoz")
    for imp in (a, b):
        imp.collect(small_net, _batches(), nn.functional.cross_entropy)
    assert not torch.allclose(a.stats["a.1"], b.stats["a.1"])
    assert ((b.stats["a.1"] >= 0) & (b.stats["a.1"] <= 1)).all()
