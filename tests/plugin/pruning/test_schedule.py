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


def _small_net_params(stem: int, width: int) -> int:
    """Parameters of ``SmallNet`` with ``stem`` channels in the stem and ``width`` in blocks a/b (10 classes)."""
    convs = 3 * stem * 9 + stem * width * 9 + width * width * 9
    bns = 2 * stem + 2 * width + 2 * width
    return convs + bns + width * 10 + 10


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.AdamW])
def test_agp_structured_inside_user_loop_keeps_optimizer_consistent(opt_cls: type, small_net: nn.Module, x32: torch.Tensor) -> None:
    model = small_net.train()
    original = sum(p.numel() for p in model.parameters())
    assert original == _small_net_params(16, 32) == 14_746
    opt = opt_cls(model.parameters(), lr=0.01, **({"momentum": 0.9} if opt_cls is torch.optim.SGD else {}))
    sched = PruningSchedule(model, x32, PruneConfig(target=Target.parse("params=0.5"), tolerance=0.05),
                            optimizer=opt, kind="agp", total_steps=3, start=2, every=2)
    ratio = sched.plan.ratio  # the final uniform channel ratio the search found for params=0.5
    assert 0.25 < ratio < 0.35 and not sched.plan.group_ratios
    fired = _train_steps(model, opt, sched, 10)
    assert fired == [False, False, True, False, True, False, True, False, False, False]
    assert sched.finished
    assert [h["call"] for h in sched.history] == [3, 5, 7] and [h["event"] for h in sched.history] == [1, 2, 3]
    # event k removes ratio * agp(k, 3) of every group's initial channels (torch-pruning keeps int(C * (1 - r)))
    fractions = [SCHEDULES["agp"](k, 3) for k in (1, 2, 3)]
    assert fractions == pytest.approx([19 / 27, 26 / 27, 1.0])
    widths = [(int(16 * (1 - ratio * f)), int(32 * (1 - ratio * f))) for f in fractions]
    params = [h["params"] for h in sched.history]
    assert params == [_small_net_params(s, w) for s, w in widths]
    assert (model.stem[0].out_channels, model.a[0].out_channels, model.b[0].out_channels) == (
        widths[-1][0], widths[-1][1], widths[-1][1])
    assert original > params[0] > params[1] >= params[2]  # front-loaded: most is removed at the first event
    assert (original - params[0]) > 2 * (params[0] - params[2])
    assert params[-1] / original == pytest.approx(0.5, abs=0.05)  # the target, within the config's tolerance
    model_params = {id(p) for p in model.parameters()}
    assert sum(p.numel() for p in model.parameters()) == params[-1]
    opt_params = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in opt_params} == model_params  # optimizer holds exactly the pruned parameters
    for p in opt_params:  # and its state was sliced to their shapes
        for v in opt.state.get(p, {}).values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                assert v.shape == p.shape


def test_schedule_fractions() -> None:
    agp = [SCHEDULES["agp"](k, 4) for k in range(1, 5)]
    assert agp == pytest.approx([0.578125, 0.875, 0.984375, 1.0])  # 1 - (1 - k/4)^3: front-loaded
    assert [SCHEDULES["iterative"](k, 4) for k in range(1, 5)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert [SCHEDULES["one-shot"](k, 1) for k in (1,)] == [1.0]


def test_unstructured_iterative_schedule(small_net: nn.Module, x32: torch.Tensor) -> None:
    opt = torch.optim.SGD(small_net.parameters(), lr=0.01)
    sched = PruningSchedule(small_net, x32, PruneConfig(method=Method.UNSTRUCTURED, target=Target.parse("sparsity=0.8")),
                            optimizer=opt, kind="iterative", total_steps=4, every=1)
    fired = _train_steps(small_net, opt, sched, 6)
    assert fired == [True, True, True, True, False, False]
    prunable = 3 * 16 * 9 + 16 * 32 * 9 + 32 * 32 * 9  # conv weights; the classifier head is ignored
    zeros = [(h["params"] - h["nonzero_params"]) / prunable for h in sched.history]
    assert zeros == pytest.approx([0.2, 0.4, 0.6, 0.8], abs=0.005)  # linear: 0.8 * k / 4 after event k
    assert sched.masks is not None and sched.masks.sparsity() == pytest.approx(0.8, abs=0.005)
    assert (small_net.fc.weight == 0).sum() == 0
    # masks held after the two later optimizer steps
    assert (small_net.a[0].weight == 0).float().mean() > 0.5
    assert int(sum((small_net.get_parameter(n) == 0).sum() for n in sched.masks.masks)) / prunable == pytest.approx(
        0.8, abs=0.005)


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
