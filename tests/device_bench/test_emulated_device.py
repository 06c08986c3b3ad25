"""Bench over SSH on the emulated aarch64 board (qemu-user): correctness and protocol, never latency."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_fixtures import Board
from tiny_models import make_tflite

from edgeslim.device_bench import bench
from edgeslim.device_bench.errors import RuntimeMissingError

pytestmark = pytest.mark.device
ORT_VERSION = "1.32.0"
LITERT_VERSION = "2.3.0"


def _log(capsys: pytest.CaptureFixture[str], tag: str, data: dict[str, object], max_abs_diff: float) -> None:
    """One line per bench straight to the terminal, so that it shows in the CI log."""
    keys = ("machine", "runtime", "runtime_version", "numpy_version", "python", "cpu_cores")
    line = {k: data.get(k) for k in keys} | {"max_abs_diff_vs_host": max_abs_diff}
    with capsys.disabled():
        print(f"\nemulated-device bench [{tag}]: {json.dumps(line)}", file=sys.stderr)


def test_onnx_on_aarch64_matches_host(board: Board, models: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    report = bench(models["small"], board.url, runs=3, warmup=1, threads=1, inputs=models["inputs"],
                   return_outputs=True, options=board.options(), results_file=tmp_path / "r.jsonl")
    data = report.results[0].data
    assert data["machine"] == "aarch64"
    assert data["runtime"] == "onnxruntime" and data["runtime_version"] == ORT_VERSION
    assert data["python"].startswith("3.11")
    x = np.load(models["inputs"])["x"][:1]
    import onnxruntime as ort

    host = ort.InferenceSession(str(models["small"]), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    device = np.asarray(data["outputs"][0], dtype=np.float32)
    diff = float(np.abs(device - host).max())
    _log(capsys, "onnx", data, diff)
    np.testing.assert_allclose(device, host, atol=1e-4, rtol=1e-4)
    assert data["top1"] == pytest.approx(0.75)  # same labels, same answers as on the host
    assert len(data["latencies_ms"]) == 3 and data["peak_rss_mb"] > 0


def test_tflite_on_aarch64_matches_host(board: Board, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, w, b = make_tflite(tmp_path / "fc.tflite", extra_site=board.site)
    x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    report = bench(path, board.url, runs=3, warmup=1, threads=1, inputs=tmp_path / "x.npz", return_outputs=True,
                   options=board.options())
    data = report.results[0].data
    assert data["machine"] == "aarch64"
    assert data["runtime"] == "ai-edge-litert" and data["runtime_version"] == LITERT_VERSION
    host = (torch.from_numpy(x[:1]) @ torch.from_numpy(w).T + torch.from_numpy(b)).numpy()
    device = np.asarray(data["outputs"][0], dtype=np.float32)
    diff = float(np.abs(device - host).max())
    _log(capsys, "tflite", data, diff)
    np.testing.assert_allclose(device, host, atol=1e-5, rtol=1e-5)


def test_missing_runtime_on_board_says_how_to_install(board: Board, tmp_path: Path) -> None:
    path, _, _ = make_tflite(tmp_path / "fc.tflite", extra_site=board.site)
    with pytest.raises(RuntimeMissingError, match=r"/usr/bin/python3 -m pip install --user tflite-runtime"):
        bench(path, board.url, runtime="tflite-runtime", options=board.options())
