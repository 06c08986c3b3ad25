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
