import pytest
import torch
from torch import nn

from edgeslim.errors import ConfigError, PruningError
from edgeslim.plugin.pruning import LayerRule, Method, PruneConfig, Target, compute_masks, prune
from edgeslim.plugin.pruning.unstructured import group_lasso_penalty, l1_penalty, masks_of


def _magnitudes(net: nn.Module) -> dict[str, torch.Tensor]:
    """|w| of SmallNet's prunable conv weights, copied before pruning."""
    return {n: p.detach().abs().clone() for n, p in net.named_parameters() if n.endswith(".weight") and p.dim() == 4}


def test_layer_scope_prunes_each_layer_to_the_target(small_net: nn.Module) -> None:
    before = _magnitudes(small_net)
    fc = small_net.fc.weight.detach().clone()
    masks = compute_masks(small_net, 0.8, scope="layer", ignored=[small_net.fc])
    rows = {r["name"]: r for r in masks.report()}
    assert sorted(rows) == sorted(before) == ["a.0.weight", "b.0.weight", "stem.0.weight"]  # fc is ignored
    for name, row in rows.items():
        assert row["zeros"] == int(0.8 * row["numel"])  # floor: stem 345/432, a 3686/4608, b 7372/9216
        assert row["sparsity"] == pytest.approx(0.8, abs=1 / row["numel"])
        assert row["zeros"] == int((small_net.get_parameter(name) == 0).sum())
        keep = masks.masks[name]
        assert before[name][keep].min() >= before[name][~keep].max()  # smallest magnitudes of this layer removed
    assert masks.sparsity() == pytest.approx(0.8, abs=0.001)
    assert torch.equal(small_net.fc.weight, fc)


def test_global_scope_hits_total_sparsity_with_one_threshold(small_net: nn.Module) -> None:
    before = _magnitudes(small_net)
    masks = compute_masks(small_net, 0.8, scope="global", ignored=[small_net.fc])
    rows = {r["name"]: r for r in masks.report()}
    total = sum(r["numel"] for r in rows.values())
    assert total == 432 + 4608 + 9216
    assert sum(r["zeros"] for r in rows.values()) == int(0.8 * total)  # 11,404
    assert masks.sparsity() == pytest.approx(0.8, abs=0.001)
    for name, row in rows.items():
        assert row["zeros"] == int((small_net.get_parameter(name) == 0).sum())
    # one threshold over all layers: every kept |w| is >= every removed |w|, whichever layer it is in
    kept = min(before[n][masks.masks[n]].min() for n in rows)
    removed = max(before[n][~masks.masks[n]].max() for n in rows)
    assert kept >= removed
    # so layers differ: the stem (fan-in 27, large weights) keeps most, b (fan-in 288) loses most
    sp = {n: r["sparsity"] for n, r in rows.items()}
    assert sp["stem.0.weight"] < 0.4 < sp["a.0.weight"] < 0.8 < sp["b.0.weight"]


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
    assert sorted(masks_of(model)) == sorted(masks.masks)  # in force on the model until made permanent
    masks.make_permanent()
    assert masks_of(model) == {}


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
