"""Joint search on the trained ResNet-18 with real Fashion-MNIST batches and ONNX Runtime on this machine.

One search (module fixture) with a coarse space at 64x64 is shared by the tests; the later
searches reuse its latency tables and sensitivity table.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from edgeslim.config import from_json, to_json
from edgeslim.data import fashion_mnist_loader
from edgeslim.errors import ConfigError
from edgeslim.exporters.accuracy import labelled_batches, torch_top1
from edgeslim.models import load
from edgeslim.pipelines.joint import (
    FINAL_RETRIES,
    Budget,
    BudgetUnreachableError,
    SearchResult,
    SearchSpace,
    joint_search,
)
from edgeslim.pipelines.joint_descent import Candidate
from edgeslim.pipelines.joint_space import analyse, ladder
from edgeslim.pipelines.latency import LatencyKey
from edgeslim.plugin.pruning.api import prune
from edgeslim.plugin.pruning.config import PruneConfig
from edgeslim.plugin.pruning.sensitivity import SensitivityResult, sensitivity
from edgeslim.plugin.pruning.structured import Plan

SPACE = SearchSpace(keep_ratios=(0.5, 1.0), round_to=(16,), groups=("conv1", r"layer[12]\..*"))  # 6 of 12 groups
SIZE = (64, 64)
X = torch.randn(1, 3, 32, 32)
#: Met by shrinking a few of the six groups; the most shrunk plan reaches ~1.2-1.5x on a loaded machine.
SPEEDUP = 1.1
#: Points of real top-1 a descent step may lose (strict: most 50 % shrinks of this space lose more).
DROP = 1.0


def test_budget_and_space_validation() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        Budget()
    with pytest.raises(ConfigError, match="positive"):
        Budget(latency_ms=-1.0)
    with pytest.raises(ConfigError, match="speedup_reference"):
        Budget(speedup=2.0, speedup_reference="int4")
    with pytest.raises(ConfigError, match="subset"):
        SearchSpace(bits=(2,))
    with pytest.raises(ConfigError, match="keep_ratios"):
        SearchSpace(keep_ratios=(0.0, 0.5))
    assert SearchSpace(keep_ratios=(0.5,)).keep_ratios == (0.5, 1.0)


def test_ladder_rounds_channels() -> None:
    rungs = ladder(64, (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0), (8, 16))
    assert [w.keep for w in rungs] == [64, 56, 48, 40, 32, 24, 16]
    assert all(w.keep % w.round_to == 0 for w in rungs)
    assert [w.keep for w in ladder(100, (0.5, 1.0), (16,))] == [100, 48]  # 50 rounded down to 48


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return load("resnet18-fmnist")


def test_prune_applies_a_given_plan_without_target_search(model: nn.Module) -> None:
    trials: list[Plan] = []
    res = prune(model, X, PruneConfig(target="params=0.5"), plan=Plan(0.0, {"layer1.0.conv1": 0.5}),
                on_trial=lambda plan, _: trials.append(plan))
    assert trials == []  # the params target was not searched
    assert res.plan.group_ratios == {"layer1.0.conv1": 0.5}
    widths = {r["layer"]: (r["out_before"], r["out_after"]) for r in res.layers}
    assert widths["layer1.0.conv1"] == (64, 32) and widths["layer1.0.bn1"] == (64, 32)
    assert widths["layer1.1.conv1"] == (64, 64) and widths["conv1"] == (64, 64)
    assert res.after.params == 11_181_642 - 32 * 64 * 9 * 2 - 2 * 32


@pytest.fixture(scope="module")
def table(model: nn.Module) -> SensitivityResult:
    data = fashion_mnist_loader("train", batch_size=96, limit=96)
    return sensitivity(model, X, data, PruneConfig(sensitivity_ratios=(0.5,), data_batches=1))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("latency"))


def _search(model: nn.Module, table: SensitivityResult, cache: str, budget: Budget, **kw: Any) -> SearchResult:
    data = fashion_mnist_loader("train", batch_size=96, limit=96)
    return joint_search(model, X, data=data, budget=budget, space=SPACE, input_size=SIZE, cache_dir=cache,
                        sensitivity_table=table, max_front=2, runs=30, data_batches=1, **kw)


@pytest.fixture(scope="module")
def tight(model: nn.Module, table: SensitivityResult, cache: str) -> SearchResult:
    events: list[str] = []
    res = _search(model, table, cache, Budget(speedup=SPEEDUP, speedup_reference="int8"),
                  on_event=lambda kind, _: events.append(kind))
    assert "measured" in events and "chosen" in events
    return res


def _key(c: Candidate) -> tuple[float, float, float]:
    assert c.measured_ms is not None
    return (c.proxy, float(c.bytes), c.measured_ms)


def test_unknown_group_is_refused_before_measuring(model: nn.Module, table: SensitivityResult, tmp_path) -> None:
    data = fashion_mnist_loader("train", batch_size=96, limit=96)
    with pytest.raises(ConfigError, match="matches no channel group"):
        joint_search(model, X, data=data, budget=Budget(speedup=2), space=SearchSpace(groups=("layer9.*",)),
                     cache_dir=str(tmp_path), sensitivity_table=table)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_tight_latency_budget_is_met_by_measurement(tight: SearchResult) -> None:
    unpruned = tight.reference_ms["int8"]
    assert tight.limits["ms"] == pytest.approx(unpruned / SPEEDUP)
    assert tight.chosen.measured_ms is not None
    assert tight.chosen.measured_ms <= tight.limits["ms"] < unpruned
    assert tight.chosen.params < 11_181_642
    assert tight.measurements > 3  # layer entries and whole models
    assert all(c.measured_ms is not None for c in tight.front)
    # max_front=2, plus a plan per further descent when a final session found none meeting the budget
    assert 1 <= len(tight.front) <= 2 + FINAL_RETRIES and tight.chosen in tight.front
    for a in tight.front:  # non-dominated in (proxy, bytes, measured ms)
        for b in tight.front:
            assert not (all(x <= y for x, y in zip(_key(b), _key(a), strict=True)) and _key(a) != _key(b))
    # the most accurate (lowest proxy) front member within the budget, judged in the final session
    ok = [c for c in tight.front if c.speedup is not None and c.speedup >= SPEEDUP]
    assert tight.chosen.proxy == min(c.proxy for c in ok)


@pytest.mark.slow
def test_front_is_timed_with_the_reference_in_one_session(tight: SearchResult) -> None:
    ref = tight.reference_ms["int8"]
    for c in tight.front:  # every member re-timed in one final session, interleaved with the reference
        assert c.measured_ms is not None and c.speedup is not None and c.reference_ms is not None
        assert c.rounds >= 5
        assert c.reference_ms == ref and c.references == {"int8": ref}
        assert c.speedup == pytest.approx(ref / c.measured_ms)
    assert tight.chosen.speedup is not None and tight.chosen.speedup >= SPEEDUP  # the budget, on the joint medians
    d = json.loads(json.dumps(tight.to_dict()))
    assert {"measured_ms", "speedup", "reference_ms", "rounds"} <= set(d["front"][0])


@pytest.mark.slow
def test_result_dict_trace_and_layers(tight: SearchResult) -> None:
    d = json.loads(json.dumps(tight.to_dict()))
    assert {"front", "trace", "measurements", "budget", "chosen", "layers"} <= set(d)
    assert d["budget"]["speedup"] == SPEEDUP
    assert sum(row["accepted"] for row in d["trace"]) == max(row["step"] for row in d["trace"])
    assert {"step", "change", "bytes", "macs", "predicted_ms", "measured_ms", "proxy", "accepted"} <= set(d["trace"][0])
    assert any(row["measured_ms"] is not None for row in d["trace"])
    rows = {r["name"]: r for r in d["layers"]}
    assert rows["conv1"]["channels_before"] == 64 and rows["fc"]["channels_after"] == 10
    assert any(r["keep_ratio"] < 1 for r in d["layers"])
    assert all(r["bits"] == 8 for r in d["layers"])


@pytest.mark.slow
def test_apply_gives_the_candidates_model(tight: SearchResult, model: nn.Module) -> None:
    res = tight.apply(model, X)
    assert sum(p.numel() for p in res.model.parameters()) == tight.chosen.params
    mods = dict(res.model.named_modules())
    for row in tight.layers():
        m = mods[row["name"]]
        if row["name"].startswith(("layer3", "layer4")):  # groups outside the searched space keep their width
            assert row["channels_after"] == row["channels_before"]
        assert (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features) == row["channels_after"]
    assert res.model(X).shape == (1, 10)
    assert sum(p.numel() for p in model.parameters()) == 11_181_642  # the input model is untouched
    smallest = max(tight.front, key=lambda c: c.proxy)
    assert tight.apply(model, X, smallest).after.params == smallest.params


@pytest.mark.slow
def test_second_search_measures_nothing_new(tight: SearchResult, model: nn.Module, table: SensitivityResult,
                                            cache: str) -> None:
    again = _search(model, table, cache, Budget(speedup=SPEEDUP, speedup_reference="int8"))
    assert again.measurements == 0
    assert again.chosen.widths == tight.chosen.widths
    assert again.chosen.measured_ms == tight.chosen.measured_ms


@pytest.mark.slow
def test_unreachable_budget_names_the_nearest(tight: SearchResult, model: nn.Module, table: SensitivityResult,
                                              cache: str) -> None:
    with pytest.raises(BudgetUnreachableError, match=r"nearest reachable measures \d+\.\d+ ms") as err:
        _search(model, table, cache, Budget(latency_ms=0.001))
    assert "ms <= 0.001" in str(err.value)


@pytest.mark.slow
def test_bytes_budget_with_four_bit_weights(tight: SearchResult, model: nn.Module, table: SensitivityResult,
                                            cache: str) -> None:
    data = fashion_mnist_loader("train", batch_size=96, limit=96)
    full = 11_181_642  # parameters; int8 weights -> ~11.2 MB
    space = SearchSpace(keep_ratios=(1.0,), round_to=(16,), bits=(4, 8))
    res = joint_search(model, X, data=data, budget=Budget(bytes=0.8 * full), space=space, input_size=SIZE,
                       cache_dir=cache, sensitivity_table=table, max_front=1, runs=10, data_batches=1)
    # layers cached; every front member has the unpruned architecture: one session, the reference alone
    assert res.measurements == 1
    assert res.chosen.bytes <= 0.8 * full
    assert any(b == 4 for b in res.chosen.bits.values())
    assert res.chosen.params == full  # no channel removed: the space has no keep ratio < 1
    assert res.front[0].measured_ms is not None


@pytest.fixture(scope="module")
def judged(tight: SearchResult, model: nn.Module, table: SensitivityResult, cache: str) -> SearchResult:
    subset = labelled_batches(fashion_mnist_loader("test", batch_size=128, limit=256), (1, 3, 32, 32), 256)

    def top1(m: nn.Module) -> float:
        with torch.no_grad():
            return torch_top1(m, subset)

    return _search(model, table, cache, Budget(speedup=SPEEDUP, speedup_reference="int8"), eval_fn=top1,
                   max_step_drop=DROP)


@pytest.mark.slow
def test_real_top1_rejects_collapsing_steps_and_ranks_the_front(judged: SearchResult) -> None:
    assert all(c.top1 is not None and 0 <= c.top1 <= 1 for c in judged.front)
    assert judged.chosen.speedup is not None and judged.chosen.speedup >= SPEEDUP
    chosen_top1 = judged.chosen.top1
    assert chosen_top1 is not None
    for c in judged.front:  # the most accurate within the budget (ties of 0.5 pt go to the faster)
        if c.speedup is not None and c.speedup >= SPEEDUP and c.top1 is not None:
            assert chosen_top1 >= c.top1 - 0.005
    steps: dict[int, list[dict[str, Any]]] = {}
    for row in judged.trace:
        steps.setdefault(row["step"], []).append(row)
    assert any(row["rejected"] for row in judged.trace)  # the coarse space has collapsing shrinks (93 % -> 43 %)
    start = next(c.top1 for c in judged.candidates if c.params == 11_181_642)  # the unpruned start
    assert start is not None and start > 0.85
    first = steps[min(steps)]
    assert all(r["from_top1"] == start for r in first)  # the first descent starts from the unpruned model
    for step in sorted(steps):
        rows = steps[step]
        here = rows[0]["from_top1"]  # the plan this step shrinks (a later descent restarts from a front member)
        assert here is not None and all(r["from_top1"] == here for r in rows)
        taken = next(r for r in rows if r["accepted"])
        for r in rows:
            if r["rejected"]:  # rejected: lost more than max_step_drop points from the current plan
                assert 100 * (here - r["top1"]) > DROP
        if 100 * (here - taken["top1"]) > DROP:  # only when every try collapsed: the one keeping the most top-1
            assert all(r["rejected"] or r["top1"] is None for r in rows if r is not taken)
            assert taken["top1"] == max(r["top1"] for r in rows if r["top1"] is not None)


def test_result_summary_keys_without_running_a_search() -> None:
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    space = analyse(net.eval(), torch.randn(1, 3, 8, 8), (8, 8), (0.5, 1.0), (8,))
    (group,) = space.groups
    full = Candidate({group.name: 16}, {group.name: 8}, 500, 2000, 9000, 0.0, 1.0, measured_ms=1.0, speedup=1.0)
    half = Candidate({group.name: 8}, {group.name: 8}, 250, 1000, 4500, 0.2, 0.5, measured_ms=0.6, speedup=1.6, step=1)
    key = LatencyKey("local", "onnxruntime", 1, (8, 8), "fp32")
    result = SearchResult([full, half], [half], half, [{"step": 1, "accepted": True}], 3, key, Budget(speedup=1.5),
                          {"speedup": 1.5}, space, (1.0, 0.0), {"fp32": 1.0}, 2.5)
    d = json.loads(json.dumps(result.to_dict()))
    assert set(d) == {"front", "trace", "measurements", "budget", "limits", "chosen", "layers", "table_key", "fit",
                      "reference_ms", "candidates", "seconds"}
    assert d["candidates"] == 2 and d["fit"] == [1.0, 0.0] and d["table_key"] == key.to_dict()
    assert d["budget"] == {"latency_ms": None, "speedup": 1.5, "bytes": None, "macs": None, "speedup_reference": "fp32"}
    assert d["chosen"] == half.to_dict() and d["front"] == [half.to_dict()]
    assert d["layers"][0] == {"name": "0", "channels_before": 16, "channels_after": 8, "keep_ratio": 0.5, "bits": 8}
    assert from_json(to_json(Budget(speedup=1.5, speedup_reference="int8"))) == Budget(speedup=1.5, speedup_reference="int8")
