"""Statistics and the JSON-lines results file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeslim.device_bench import agent
from edgeslim.device_bench.results import BenchResult, JsonlWriter, read_jsonl
from edgeslim.device_bench.stats import ratio, summarize


def test_summarize_matches_numpy_and_agent() -> None:
    lat = list(np.random.default_rng(0).gamma(2.0, 1.5, size=101))
    s = summarize(lat)
    assert s.p50 == pytest.approx(float(np.median(lat)))
    assert s.p99 == pytest.approx(float(np.percentile(lat, 99)))
    assert s.std == pytest.approx(float(np.std(lat)))
    srt = sorted(lat)
    for q, v in ((50, s.p50), (90, s.p90), (99, s.p99)):
        assert agent.percentile(srt, q) == pytest.approx(v)  # the device computes the same numbers
    with pytest.raises(ValueError, match="no latencies"):
        summarize([])


def test_ratio() -> None:
    assert ratio(2.0, 4.0) == 0.5
    assert ratio(None, 1.0) is None and ratio(1.0, 0.0) is None


def test_jsonl_appends_never_truncates(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.jsonl"
    w = JsonlWriter(path)
    w.append(BenchResult("a.onnx", "local", data={"p50": 1.0}).record())
    JsonlWriter(path).append(BenchResult("b.onnx", "local", "failed", error="boom").record())
    recs = read_jsonl(path)
    assert [r["artifact"] for r in recs] == ["a.onnx", "b.onnx"]
    assert recs[1]["error"] == "boom" and all("time" in r for r in recs)
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_summary_ratio_to_first() -> None:
    """Ratios of different artefacts' p50 to the first one (the README's ResNet-18 timings), missing values as None."""
    from edgeslim.device_bench import BenchReport

    fp32 = BenchResult("fp32.onnx", "local", data={"p50": 20.0})
    int8 = BenchResult("int8.onnx", "local", data={"p50": 6.8})
    w16 = BenchResult("w16.tflite", "local", data={"p50": 929.0})
    failed = BenchResult("bad.onnx", "local", "failed", error="boom")
    assert int8.summary(fp32)["ratio_p50"] == pytest.approx(0.34)
    assert w16.summary(fp32)["ratio_p50"] == pytest.approx(46.45)
    assert fp32.summary(int8)["ratio_p50"] == pytest.approx(20.0 / 6.8)
    assert failed.summary(fp32)["ratio_p50"] is None  # no latency of its own
    assert int8.summary(failed)["ratio_p50"] is None and int8.summary()["ratio_p50"] is None  # no reference
    report = BenchReport("local", [fp32, int8, w16, failed]).summary()
    assert [r["ratio_p50"] for r in report["results"]] == pytest.approx([1.0, 0.34, 46.45, None])
