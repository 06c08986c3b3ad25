"""Alternating pipeline: pruning events and QAT in one loop on the real ResNet-18 and Fashion-MNIST."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn
from torch.fx import GraphModule
from torch.nn import functional as F
from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

import edgeslim
from edgeslim.data import evaluate, fashion_mnist_loader
from edgeslim.errors import ConfigError, EdgeslimError
from edgeslim.models import copy_arch
from edgeslim.pipelines.alternating import AlternatingConfig, AlternatingError, AlternatingSchedule, alternating
from edgeslim.plugin.pruning import Method, PruneConfig, Target
from edgeslim.plugin.pruning.finetune import distillation_loss

TARGET = 0.75
SPARSITY = 0.25
STEPS = 12


def _fake_quants(model: nn.Module) -> int:
    return sum(isinstance(m, FakeQuantizeBase) for m in model.modules())


def _snapshot(sched: AlternatingSchedule, opt: torch.optim.Optimizer) -> dict[str, Any]:
    held = [p for g in opt.param_groups for p in g["params"]]
    params = dict(sched.model.named_parameters())
    masks = sched._prune.masks.masks if sched._prune.masks is not None else {}
    return {
        "model": sched.model,
        "fake_quants": _fake_quants(sched.model),
        "same_params": {id(p) for p in held} == {id(p) for p in params.values()} and len(held) == len(params),
        "momentum_shapes_ok": all(opt.state[p]["momentum_buffer"].shape == p.shape for p in held if p in opt.state),
        "momentum_count": sum(p in opt.state for p in held),
        "masked_nonzero": sum(int(params[n][~m].count_nonzero()) for n, m in masks.items()),
        "masked_total": sum(int((~m).sum()) for m in masks.values()),
    }


@pytest.fixture(scope="module")
def run(resnet18_fmnist: nn.Module, test_loader_1k: Any) -> dict[str, Any]:
    """One short alternating run: events at steps 1 and 5, QAT from step 4 (so one event re-prepares)."""
    torch.manual_seed(0)
    teacher = resnet18_fmnist
    model = copy_arch(teacher, copy.deepcopy(teacher)).train()  # the copy rebuilds on load like the original
    x = torch.randn(1, 3, 32, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    config = PruneConfig(method=Method.HYBRID, target=Target.parse(f"params={TARGET}"), sparsity=SPARSITY)
    sched = AlternatingSchedule(model, x, config, "int8", optimizer=opt, total_steps=STEPS, qat_from=4,
                                prune_steps=2, prune_every=4, freeze_bn_at=10, freeze_observers_at=11)
    loader = iter(fashion_mnist_loader("train", batch_size=32, limit=STEPS * 32, seed=0))
    snaps: dict[int, dict[str, Any]] = {0: _snapshot(sched, opt)}
    for step in range(1, STEPS + 1):
        xb, yb = next(loader)
        out = sched.model(xb)
        with torch.no_grad():
            t_out = teacher(xb)
        loss = distillation_loss(out, t_out, yb, alpha=0.7)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step(loss)
        snaps[step] = _snapshot(sched, opt)
    result = sched.finish()
    return {"sched": sched, "opt": opt, "snaps": snaps, "result": result, "model": model,
            "float_top1": evaluate(teacher, test_loader_1k), "top1": evaluate(result.quant.model, test_loader_1k)}


@pytest.mark.slow
def test_params_shrink_to_target(run: dict[str, Any]) -> None:
    summary = run["result"].prune
    assert summary.before.params == 11_181_642
    assert abs(summary.params_fraction - TARGET) < 0.03
    assert run["snaps"][1]["model"] is run["model"]  # first event on the eager model
    narrowed = [r for r in summary.layers if r["type"] == "Conv2d" and r["out_after"] < r["out_before"]]
    assert len(narrowed) >= 8
    assert [(r.step, r.events) for r in run["result"].history if r.events] == [
        (1, ("prune",)), (4, ("prepare_qat",)), (5, ("prune",)), (10, ("freeze_bn",)), (11, ("freeze_observers",))
    ]
    assert [r.phase for r in run["result"].history] == ["float"] * 3 + ["qat"] * 9
    assert all(r.loss is not None and 0 < r.loss < 5 for r in run["result"].history)


@pytest.mark.slow
def test_fake_quant_after_switch_and_after_reprepare(run: dict[str, Any]) -> None:
    snaps = run["snaps"]
    assert snaps[3]["fake_quants"] == 0
    assert isinstance(snaps[4]["model"], GraphModule) and snaps[4]["fake_quants"] >= 40
    assert snaps[5]["model"] is not snaps[4]["model"]  # the structural event during QAT re-prepared
    assert snaps[5]["fake_quants"] == snaps[4]["fake_quants"]
    assert snaps[STEPS]["model"] is snaps[5]["model"]


@pytest.mark.slow
def test_optimizer_holds_exactly_the_current_model(run: dict[str, Any]) -> None:
    assert run["sched"].optimizer is run["opt"]
    for step in range(STEPS + 1):
        assert run["snaps"][step]["same_params"], step
        assert run["snaps"][step]["momentum_shapes_ok"], step
    assert run["snaps"][4]["momentum_count"] == 62  # momentum carried over to the prepared graph
    assert run["snaps"][5]["momentum_count"] == 62  # and sliced through the pruning event


@pytest.mark.slow
def test_masks_hold_through_qat(run: dict[str, Any]) -> None:
    for step in range(5, STEPS + 1):
        snap = run["snaps"][step]
        assert snap["masked_total"] > 1_000_000 and snap["masked_nonzero"] == 0, step
    assert abs(run["result"].prune.sparsity - SPARSITY) < 0.01
    final = dict(run["result"].float_model.named_parameters())
    masks = run["sched"]._prune.masks.masks
    assert sum(int(final[n][~m].count_nonzero()) for n, m in masks.items()) == 0


@pytest.mark.slow
def test_converted_top1_close_to_float(run: dict[str, Any]) -> None:
    # measured (12 steps, batch 32): float 93.3 %, 75 % params + 25 % sparsity + int8 QAT 91.0 % (8 steps: 87.5 %)
    assert run["float_top1"] > 0.9
    assert run["top1"] > run["float_top1"] - 0.04


@pytest.mark.slow
def test_save_and_load_reproduce_outputs(run: dict[str, Any], tmp_path: Any) -> None:
    quant = run["result"].quant
    path = edgeslim.save(quant, tmp_path / "alt.pt")
    loaded = edgeslim.load(path)
    xb, _ = next(iter(fashion_mnist_loader("test", batch_size=16, limit=16)))
    with torch.no_grad():
        want, got = quant.model(xb), loaded(xb)
    assert torch.equal(want.argmax(1), got.argmax(1))
    assert torch.allclose(want, got, atol=1e-4)


# -- misuse: a tiny CNN keeps these fast -------------------------------------------------------------


def _tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def _train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    loss = F.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.randint(0, 10, (4,)))
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_stale_model_and_stale_optimizer_fail_clearly() -> None:
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = AlternatingSchedule(model, torch.randn(1, 3, 8, 8), PruneConfig(target=Target.parse("ratio=0.25")), "int8",
                                optimizer=opt, total_steps=4, qat_from=1, prune_steps=1)
    _train_step(model, opt)
    assert sched.step()  # pruned, then prepared for QAT
    with pytest.raises(AlternatingError, match=r"sched\.model"):
        model(torch.randn(2, 3, 8, 8))
    stale = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = sched.model(torch.randn(4, 3, 8, 8)).sum()
    stale.zero_grad()
    loss.backward()
    stale.step()
    with pytest.raises(AlternatingError, match=r"stale.*sched\.optimizer"):
        sched.step()
    _train_step(sched.model, opt)  # stepping the managed optimizer again is fine
    assert not sched.step()


def test_finish_before_qat_and_bad_layouts() -> None:
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(1, 3, 8, 8)
    cfg = PruneConfig(target=Target.parse("ratio=0.25"))
    sched = AlternatingSchedule(model, x, cfg, "int8", optimizer=opt, total_steps=4, qat_from=2, prune_steps=2,
                                prune_every=2)
    with pytest.raises(AlternatingError, match="before QAT starts at step 2"):
        sched.finish()
    for _ in range(2):
        _train_step(sched.model, opt)
        sched.step()
    with pytest.raises(AlternatingError, match="after 1 of 2 pruning events; train to step 3"):
        sched.finish()
    fresh = _tiny()
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.01)
    with pytest.raises(ConfigError, match=r"qat_from=5 .*total_steps=4"):
        AlternatingSchedule(fresh, x, cfg, "int8", optimizer=fresh_opt, total_steps=4, qat_from=5)
    with pytest.raises(ConfigError, match="last pruning event falls at step 9"):
        AlternatingConfig(total_steps=4, qat_from=1, prune_steps=3, prune_every=4)
    with pytest.raises(ConfigError, match="step 7 comes after the observers freeze"):
        AlternatingSchedule(fresh, x, cfg, "int8", optimizer=fresh_opt, total_steps=10, qat_from=2, prune_steps=2,
                            prune_every=6, freeze_observers_at=5)
    with pytest.raises(ConfigError, match=r"model\.parameters"):
        AlternatingSchedule(fresh, x, cfg, "int8", optimizer=opt, total_steps=4, qat_from=2, prune_steps=1)


@pytest.mark.parametrize(("config", "match"), [
    (PruneConfig(method=Method.UNSTRUCTURED, target=Target.parse("sparsity=0.5"), round_to=8), "round_to .*method=hybrid"),
    (PruneConfig(method=Method.UNSTRUCTURED, target=Target.parse("params=0.5"), sparsity=0.5), "cannot reach params"),
    (PruneConfig(method=Method.STRUCTURED, target=Target.parse("sparsity=0.5")), "unstructured or hybrid"),
    (PruneConfig(iterative_steps=3), "prune_steps"),
])
def test_contradictory_prune_configs_are_refused(config: PruneConfig, match: str) -> None:
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(EdgeslimError, match=match):
        AlternatingSchedule(model, torch.randn(1, 3, 8, 8), config, "int8", optimizer=opt, total_steps=4, qat_from=2,
                            prune_steps=1)


def test_config_round_trip_and_defaults() -> None:
    cfg = AlternatingConfig.spread(100)
    assert AlternatingConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.prune_events() == (1, 16, 31, 46) and cfg.qat_from == 33
    assert cfg.freeze_bn_at == 66 and cfg.freeze_observers_at == 83
    with pytest.raises(ConfigError, match=r"unknown alternating config key\(s\) lr; known: "):
        AlternatingConfig.from_dict({**cfg.to_dict(), "lr": 1})


def test_qat_from_start_every_event_reprepares_and_adam_state_follows() -> None:
    model = _tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    config = PruneConfig(method=Method.HYBRID, target=Target.parse("ratio=0.25"), sparsity=0.5)
    sched = AlternatingSchedule(model, torch.randn(1, 3, 8, 8), config, "int8", optimizer=opt, total_steps=6,
                                qat_from=0, prune_steps=2, prune_every=2)
    assert isinstance(sched.model, GraphModule) and _fake_quants(sched.model) > 0
    graphs = [sched.model]
    for _ in range(6):
        _train_step(sched.model, opt)
        sched.step()
        graphs.append(sched.model)
        held = [p for g in opt.param_groups for p in g["params"]]
        assert {id(p) for p in held} == {id(p) for p in sched.model.parameters()}
        assert all(opt.state[p]["exp_avg"].shape == p.shape for p in held)
    assert graphs[1] is not graphs[0] and graphs[2] is graphs[1]  # step 1 pruned during QAT: a new graph
    assert dict(sched.model.named_parameters())["0.weight"].shape[0] == 12  # 16 channels, ratio 0.25
    result = sched.finish()
    assert result.prune.sparsity == pytest.approx(0.5, abs=0.01)
    assert [r.events for r in result.history][:4] == [("prune",), (), ("prune", "freeze_bn"), ("freeze_observers",)]


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(n)]


def test_alternating_runs_on_the_device_asked_for_and_returns_cpu_models() -> None:
    config = PruneConfig(target=Target.parse("ratio=0.25"), criterion="taylor")  # data-driven: batches follow the device
    x = torch.randn(1, 3, 8, 8)
    torch.manual_seed(0)
    explicit = alternating(_tiny(), x, _batches(4), config, "int8", steps=4, device="cpu")
    torch.manual_seed(0)
    auto = alternating(_tiny(), x, _batches(4), config, "int8", steps=4, device="auto")  # the CPU here
    for result in (explicit, auto):
        assert {p.device.type for p in result.float_model.parameters()} == {"cpu"}
        assert {t.device.type for t in result.quant.model.state_dict().values()} == {"cpu"}
    assert torch.equal(explicit.quant.model(x), auto.quant.model(x))
    with pytest.raises(ConfigError, match=r"alternating\(device=\.\.\.\) cuda: no CUDA GPU is available on this "
                                          r"machine \(torch\.cuda\.is_available\(\) is False\)"):
        alternating(_tiny(), x, _batches(4), config, "int8", steps=4, device="cuda")
