import pytest
import torch
from torch import nn

from edgeslim.errors import ConfigError
from edgeslim.plugin.pruning import Method, PruneConfig, Target
from edgeslim.plugin.pruning.schedule import SCHEDULES, PruningSchedule


def _train_steps(model: nn.Module, opt: torch.optim.Optimizer, sched: PruningSchedule, n: int) -> list[bool]:
    fired = []
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        fired.append(sched.step())
    return fired


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.AdamW])
def test_agp_structured_inside_user_loop_keeps_optimizer_consistent(opt_cls: type, small_net: nn.Module, x32: torch.Tensor) -> None:
    model = small_net.train()
    opt = opt_cls(model.parameters(), lr=0.01, **({"momentum": 0.9} if opt_cls is torch.optim.SGD else {}))
    sched = PruningSchedule(model, x32, PruneConfig(target=Target.parse("params=0.5"), tolerance=0.05),
                            optimizer=opt, kind="agp", total_steps=3, start=2, every=2)
    fired = _train_steps(model, opt, sched, 10)
    assert fired == [False, False, True, False, True, False, True, False, False, False]
    assert sched.finished
    params = [h["params"] for h in sched.history]
    assert params[0] > params[1] >= params[2]
    assert abs(params[-1] / sum(p.numel() for p in small_net.parameters()) - 0.5) < 0.06 or params[-1] < params[0]
    model_params = {id(p) for p in model.parameters()}
    opt_params = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in opt_params} == model_params  # optimizer holds exactly the pruned parameters
    for p in opt_params:  # and its state was sliced to their shapes
        for v in opt.state.get(p, {}).values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                assert v.shape == p.shape


def test_agp_fractions() -> None:
    agp = [SCHEDULES["agp"](k, 4) for k in range(1, 5)]
    assert agp == sorted(agp) and agp[-1] == 1.0 and agp[0] > 0.25  # front-loaded


def test_unstructured_iterative_schedule(small_net: nn.Module, x32: torch.Tensor) -> None:
    opt = torch.optim.SGD(small_net.parameters(), lr=0.01)
    sched = PruningSchedule(small_net, x32, PruneConfig(method=Method.UNSTRUCTURED, target=Target.parse("sparsity=0.8")),
                            optimizer=opt, kind="iterative", total_steps=4, every=1)
    _train_steps(small_net, opt, sched, 6)
    assert sched.masks is not None and sched.masks.sparsity() == pytest.approx(0.8, abs=0.01)
    assert (small_net.a[0].weight == 0).float().mean() > 0.5  # masks held after later optimizer steps


def test_schedule_bad_kind(small_net: nn.Module, x32: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="unknown schedule kind"):
        PruningSchedule(small_net, x32, PruneConfig(), kind="cosine")


def test_sensitivity_allocated_schedule(small_net: nn.Module, x32: torch.Tensor) -> None:
    from edgeslim.plugin.pruning import Allocation

    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))]
    opt = torch.optim.SGD(small_net.parameters(), lr=0.01)
    cfg = PruneConfig(target=Target.parse("params=0.5"), allocation=Allocation.SENSITIVITY, tolerance=0.05)
    sched = PruningSchedule(small_net, x32, cfg, optimizer=opt, kind="iterative", total_steps=2, data=data)
    assert sched.plan.group_ratios  # per-group ratios, not one uniform ratio
    _train_steps(small_net, opt, sched, 2)
    total = sum(p.numel() for p in small_net.parameters())
    assert sched.history[-1]["params"] == total < 14_746 * 0.6
