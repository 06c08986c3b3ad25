"""Latency tables measured with the real exporter and ONNX Runtime on this machine."""

from __future__ import annotations

import json

import pytest
import torch

from edgeslim.errors import ConfigError
from edgeslim.models import load
from edgeslim.pipelines.latency import (
    LatencyKey,
    LatencyMeasurementError,
    LatencyMeter,
    LayerGeometry,
    cache_root,
    fingerprint,
    measure_model,
)
from edgeslim.pipelines.latency_compare import Comparison, Timing

KEY = LatencyKey("local", "onnxruntime", 2, (32, 32), "int8")
SMALL = LayerGeometry("conv", 16, 16, (3, 3), (1, 1), (1, 1), 1, 32, 32)
BIG = LayerGeometry("conv", 64, 64, (3, 3), (1, 1), (1, 1), 1, 32, 32)
HEAD = LayerGeometry("linear", 512, 10)


def test_key_validation_and_file_name() -> None:
    with pytest.raises(ConfigError, match="quant"):
        LatencyKey("local", "onnxruntime", 2, (32, 32), "int4")
    with pytest.raises(ConfigError, match="unknown runtime"):
        LatencyKey("local", "tensorflow", 2, (32, 32), "int8")
    name = LatencyKey("ssh://pi@10.0.0.2:22", "ai-edge-litert", 4, (224, 224), "fp32").file_name()
    assert "/" not in name and ":" not in name and name.endswith(".json")
    assert LatencyKey("ssh://pi@10.0.0.2:22", "ai-edge-litert", 4, (224, 224), "fp32").format == "tflite"
    assert KEY.format == "onnx"
    assert LatencyKey("local", "tensorrt", 1, (32, 32), "fp32").format == "tensorrt"  # from the exporters' suffixes
    assert KEY.file_name() != LatencyKey("local", "onnxruntime", 1, (32, 32), "int8").file_name()


def test_meter_validation(tmp_path) -> None:
    with pytest.raises(ConfigError, match="model_rounds"):
        LatencyMeter(KEY, tmp_path, model_rounds=0)
    with pytest.raises(ConfigError, match="runs"):
        LatencyMeter(KEY, tmp_path, runs=0)


def test_cache_root_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path))
    assert cache_root() == tmp_path / "latency"
    assert cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("EDGESLIM_CACHE")
    assert cache_root().parts[-3:] == (".cache", "edgeslim", "latency")


def test_layer_table_is_measured_once_and_cached(tmp_path) -> None:
    meter = LatencyMeter(KEY, tmp_path, runs=30)
    first = meter.layers([SMALL, BIG, HEAD, BIG])
    assert meter.measurements == 3  # BIG twice: measured once
    assert set(first) == {SMALL.key(), BIG.key(), HEAD.key()}
    assert all(v > 0 for v in first.values())
    assert first[BIG.key()] > first[SMALL.key()]  # 16x the MACs
    saved = json.loads((tmp_path / KEY.file_name()).read_text())
    assert saved["key"]["threads"] == 2 and saved["entries"] == first

    again = LatencyMeter(KEY, tmp_path)
    assert again.layers([BIG, SMALL, HEAD]) == first
    assert again.measurements == 0
    assert again.missing([SMALL, LayerGeometry("conv", 32, 16, (3, 3), (1, 1), (1, 1), 1, 32, 32)]) != []


def test_table_of_another_key_is_refused(tmp_path) -> None:
    other = LatencyKey("local", "onnxruntime", 1, (32, 32), "int8")
    LatencyMeter(other, tmp_path)._save()  # a valid table of another key, under this key's file name
    (tmp_path / other.file_name()).rename(tmp_path / KEY.file_name())
    with pytest.raises(LatencyMeasurementError, match="belongs to"):
        LatencyMeter(KEY, tmp_path)


@pytest.mark.slow
def test_measure_model_whole_and_cached(tmp_path) -> None:
    model = load("resnet18-fmnist")
    x = torch.randn(1, 3, 32, 32)
    meter = LatencyMeter(KEY, tmp_path, runs=20)
    ms = measure_model(model, x, device="local", runtime="onnxruntime", threads=2, quant="int8", input_size=(32, 32),
                       meter=meter)
    assert 0.01 < ms < 1000
    assert meter.measurements == 1
    assert meter.models([load("resnet18-fmnist")]) == [ms]  # same architecture: cached, weights do not matter
    assert meter.measurements == 1
    with pytest.raises(ConfigError, match="meter measures"):
        measure_model(model, x, quant="fp32", input_size=(32, 32), meter=meter)
    wider = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3))
    assert fingerprint(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))) != fingerprint(wider)
    assert fingerprint(wider) == fingerprint(torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3)))


def test_layer_is_timed_at_its_real_input_size(tmp_path) -> None:
    meter = LatencyMeter(LatencyKey("local", "onnxruntime", 2, (64, 64), "int8"), tmp_path, runs=40)
    big = LayerGeometry("conv", 64, 64, (3, 3), (1, 1), (1, 1), 1, 64, 64)
    small = LayerGeometry("conv", 64, 64, (3, 3), (1, 1), (1, 1), 1, 16, 16)
    ms = meter.layers([big, small])
    assert ms[big.key()] > 2.5 * ms[small.key()]  # 16x the pixels (a 1x1 timing would make them equal)


def _tiny(width: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, 10)).eval()


def test_comparison_times_models_with_the_references_in_one_session(tmp_path) -> None:
    key = LatencyKey("local", "onnxruntime", 2, (48, 48), "int8")
    meter = LatencyMeter(key, tmp_path, runs=15, warmup=2)
    full, half = _tiny(96), _tiny(24)
    with pytest.raises(ConfigError, match="precision"):
        Comparison(meter, {"int4": (full, "int4")})
    with Comparison(meter, {"int8": (full, "int8"), "fp32": (full, "fp32")}) as timer:
        got = timer.time([half, full], rounds=3)
        assert timer.sessions == 1 and meter.measurements == 3  # two references and the half model
        t_half, t_full = got
        assert t_half.references == t_full.references and set(t_half.references) == {"int8", "fp32"}
        assert t_half.rounds == 3 and len(t_half.per_round) == 3
        assert t_full.rounds == 4 and t_full.ms == t_full.references["int8"]  # the reference itself: its readings
        assert t_full.speedup("int8") == 1.0
        assert t_half.speedup("int8") > 1.5  # 1/16 of the MACs of the second conv
        assert timer.time([full, half], rounds=3) == [t_full, t_half]  # cached with the session's references
        assert timer.sessions == 1 and meter.measurements == 3
    saved = json.loads((tmp_path / key.file_name()).read_text())["compared"]
    assert len(saved) == 1 and all(set(v["references"]) == {"int8", "fp32"} for v in next(iter(saved.values())).values())
    assert [Timing.from_dict(t.to_dict()) for t in got] == got
