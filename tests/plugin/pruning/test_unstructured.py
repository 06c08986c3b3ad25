import pytest
import torch
from torch import nn

from edgeslim.errors import ConfigError, PruningError
from edgeslim.plugin.pruning import LayerRule, Method, PruneConfig, Target, compute_masks, prune
from edgeslim.plugin.pruning.unstructured import group_lasso_penalty, l1_penalty


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_masks_hit_sparsity(scope: str, small_net: nn.Module) -> None:
    masks = compute_masks(small_net, 0.8, scope=scope, ignored=[small_net.fc])
    assert masks.sparsity() == pytest.approx(0.8, abs=0.005)
    for row in masks.report():
        assert row["zeros"] == int((small_net.get_parameter(row["name"]) == 0).sum())
        if scope == "layer":
            assert row["sparsity"] == pytest.approx(0.8, abs=0.01)
    kept = small_net.a[0].weight[masks.masks["a.0.weight"]].abs().min()
    assert kept >= small_net.a[0].weight.abs()[~masks.masks["a.0.weight"]].max() or scope == "global"


def test_masks_survive_finetune_steps_and_become_permanent(small_net: nn.Module) -> None:
    res = prune(small_net, torch.randn(1, 3, 32, 32), PruneConfig(method=Method.UNSTRUCTURED, target=Target.parse("sparsity=0.9")))
    model, masks = res.model, res.masks
    assert masks is not None and res.summary()["sparsity"] == pytest.approx(0.9, abs=0.005)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    masks.attach(opt)
    for _ in range(3):
        loss = model(torch.randn(4, 3, 32, 32)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert masks.sparsity() == pytest.approx(0.9, abs=0.005)
    w = model.a[0].weight
    assert torch.all(w[~masks.masks["a.0.weight"]] == 0)
    masks.make_permanent()
    assert not hasattr(model, "edgeslim_masks")


def test_gradient_criterion_and_layer_rule(small_net: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))]
    masks = compute_masks(small_net, 0.5, criterion="gradient", batches=data,
                          rules=(LayerRule("stem.0", sparsity=0.0),))
    rows = {r["name"]: r for r in masks.report()}
    assert rows["stem.0.weight"]["zeros"] == 0
    pooled = [r for n, r in rows.items() if n != "stem.0.weight"]
    assert sum(r["zeros"] for r in pooled) / sum(r["numel"] for r in pooled) == pytest.approx(0.5, abs=0.005)
    with pytest.raises(PruningError, match="needs gradients"):
        compute_masks(small_net, 0.5, criterion="gradient")
    with pytest.raises(ConfigError):
        compute_masks(small_net, 1.0)


def test_hybrid_structured_then_sparse(small_net: nn.Module, x32: torch.Tensor) -> None:
    res = prune(small_net, x32, PruneConfig(method=Method.HYBRID, target=Target.parse("ratio=0.5"), sparsity=0.5))
    assert res.after.params < 0.5 * res.before.params
    assert res.after.nonzero_params < 0.6 * res.after.params


def test_regularisers_are_differentiable_and_positive(small_net: nn.Module) -> None:
    for pen in (l1_penalty(small_net, 1e-3), group_lasso_penalty(small_net, 1e-3)):
        assert pen.item() > 0
        pen.backward()
    assert small_net.a[0].weight.grad is not None
