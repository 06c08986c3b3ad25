"""``edgeslim bench`` on the local target: the JSON contract, the table on stderr, the JSON-lines file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "tiny model.onnx"
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10))
    torch.onnx.export(net.eval(), (torch.randn(1, 1, 8, 8),), str(path), dynamo=True, external_data=False)
    return path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeslim.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, check=False)


def test_bench_local_json_contract(tiny_onnx: Path, tmp_path: Path) -> None:
    proc = _cli("bench", str(tiny_onnx), "--target", "local", "--runs", "20", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    result = summary["results"][0]
    assert result["p50"] > 0 and result["p50"] <= result["p90"] <= result["p99"]
    assert result["runs"] == 20 and result["runtime"] == "onnxruntime" and summary["p50"] == result["p50"]
    assert "p50 ms" in proc.stderr
    recs = [json.loads(line) for line in (tmp_path / "edgeslim-bench.jsonl").read_text().splitlines()]
    assert len(recs) == 1 and len(recs[0]["latencies_ms"]) == 20


def test_bench_two_artefacts_ratio(tiny_onnx: Path, tmp_path: Path) -> None:
    """Two different artefacts: the second (~14,000x the multiply-adds) is reported as many times slower."""
    heavy = tmp_path / "heavy.onnx"
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 64, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten())
    torch.onnx.export(net.eval(), (torch.randn(1, 1, 32, 32),), str(heavy), dynamo=True, external_data=False)
    proc = _cli("bench", str(tiny_onnx), str(heavy), "--runs", "5", "--json", "--results", "out.jsonl",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    a, b = json.loads(proc.stdout.strip().splitlines()[-1])["results"]
    assert (Path(a["artifact"]).name, Path(b["artifact"]).name) == ("tiny model.onnx", "heavy.onnx")
    assert a["ratio_p50"] == 1.0  # the first artefact is the reference
    assert b["ratio_p50"] > 5, b["ratio_p50"]  # 38 M vs 2.7 k multiply-adds
    recs = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and [len(r["latencies_ms"]) for r in recs] == [5, 5]
    # the ratio agrees with the medians of the raw latencies written to the results file
    medians = [float(np.median(r["latencies_ms"])) for r in recs]
    assert b["ratio_p50"] == pytest.approx(medians[1] / medians[0], rel=1e-6)


def test_bench_missing_file_fails_cleanly(tmp_path: Path) -> None:
    proc = _cli("bench", str(tmp_path / "nope.onnx"), "--json", cwd=tmp_path)
    assert proc.returncode == 2 and "is not a file" in " ".join(proc.stderr.split()) and proc.stdout == ""
