"""Plans sized without pruning (PlanEvaluator) against real prunes: params and bytes exact, MACs within 0.5 %."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from edgeslim.plugin.pruning.attention import convert_attention
from edgeslim.plugin.pruning.config import PruneConfig
from edgeslim.plugin.pruning.importance import make
from edgeslim.plugin.pruning.plan_stats import PlanEvaluator
from edgeslim.plugin.pruning.structured import Plan, ignored_modules
from edgeslim.plugin.pruning.targets import trial


def _tiny_densenet() -> nn.Module:
    return torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=10)


def _tiny_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(32, 8, 2, 4, 64, 128, num_classes=10)


MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
    "regnet_x_400mf": lambda: torchvision.models.regnet_x_400mf(num_classes=10),  # grouped convs
    "densenet": _tiny_densenet,  # concatenations
    "vit": _tiny_vit,  # heads + MLP widths (TransformerPruner)
}
SLOW = ("mobilenet_v2", "regnet_x_400mf")  # 45-120 s each on 2 busy cores (real prunes to compare with)
PLANS = [Plan(0.3), Plan(0.55, global_ranking=True), Plan(0.2, group_ratios={"__first__": 0.6})]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS])
@pytest.mark.parametrize("round_to", [None, 8])
def test_plan_stats_match_a_real_prune(name: str, round_to: int | None) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = torch.randn(1, 3, 32, 32)
    config = PruneConfig(round_to=round_to)
    convert_attention(model, keep=ignored_modules(model, config))
    imp = make("l2")
    evaluator = PlanEvaluator(model, x, config, imp)
    first = evaluator.root_names()[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for given in PLANS:
        plan = Plan(given.ratio, {first: 0.6}) if "__first__" in given.group_ratios else given
        est = evaluator.stats(plan)
        real = trial(model, x, config, imp, plan)
        assert (est.params, est.bytes) == (real.params, real.bytes), (name, plan)
        assert abs(est.macs / real.macs - 1) <= 0.005, (name, plan, est.macs, real.macs)
        assert est.params < evaluator.before.params
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing was pruned


class _CatBlocks(nn.Module):
    """Two HGNet-style blocks: each concatenates its input with two conv outputs, then aggregates them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.ModuleList()
        for _ in range(2):
            layers = nn.ModuleList([nn.Conv2d(16, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)])
            self.blocks.append(nn.ModuleDict({"layers": layers, "agg": nn.Conv2d(32, 16, 1)}))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            outs = [x]
            for layer in block["layers"]:  # type: ignore[union-attr]
                outs.append(torch.relu(layer(outs[-1])))
            x = block["agg"](torch.cat(outs, 1))
        return self.fc(x.mean((2, 3)))


def test_counting_plans_leaves_the_concat_offsets_for_the_real_prune() -> None:
    # counting a plan prunes shape copies of every member, torch-pruning's concat op included; its sizes list
    # was shared with the graph's, so the real prune that follows cut the aggregation's inputs at wrong offsets
    torch.manual_seed(0)
    model = _CatBlocks().eval()
    x = torch.randn(1, 3, 16, 16)
    config = PruneConfig()
    imp = make("l2")
    plan = Plan(0.3)
    real = trial(model, x, config, imp, plan)
    evaluator = PlanEvaluator(model, x, config, imp)
    sizes = {}
    for p in (Plan(0.5), plan):
        assert evaluator.stats(p).params < evaluator.before.params
    for module, node in evaluator._graph.module2node.items() if evaluator._graph is not None else ():
        if getattr(module, "concat_sizes", None) is not None:
            sizes[node.name] = list(module.concat_sizes)
    assert sorted(sizes.values()) == [[16, 8, 8], [16, 8, 8]]  # the graph's own sizes, untouched by counting
    pruned = evaluator.prune(plan)
    assert pruned(x).shape == (1, 10)
    assert sum(p.numel() for p in pruned.parameters()) == real.params
