"""The user examples run as scripts and print numbers that hold up (real model, real test images)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # ~2.5 min of CPU on 2 cores: training, two conversions, ONNX + TFLite export, bench


def _run(script: str, *args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], check=False, capture_output=True,
                          text=True, timeout=900, cwd=cwd)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_drop_in_training_then_export_and_bench(tmp_path: Path) -> None:
    saved = tmp_path / "drop.pt"
    out = _run("drop_in_training.py", "--steps", "6", "--events", "1", "--qat-from", "2", "--target", "params=0.8",
               "--eval-images", "200", "--batch-size", "16", "--out", str(saved), cwd=tmp_path)
    assert re.search(r"^step 1: prune -> [\d,]+ params", out, re.M)
    assert re.search(r"^step 2: prepare_qat", out, re.M)
    sizes = re.search(r"params: ([\d,]+) -> ([\d,]+) \(([\d.]+) %\)", out)
    assert sizes, out
    before, after = (int(sizes.group(i).replace(",", "")) for i in (1, 2))
    assert before == 11_181_642
    assert 0.77 < after / before < 0.83  # target params=0.8 (torch-pruning's search tolerance: 2 %)
    tops = re.search(r"float ([\d.]+) %, pruned \+ int8 ([\d.]+) %", out)
    assert tops, out
    top_float, top_int8 = float(tops.group(1)), float(tops.group(2))
    assert top_float > 90.0
    assert top_int8 > top_float - 5.0  # measured: 92.0 -> 92.0 on these 200 images
    assert "reloaded outputs match: True" in out
    assert saved.is_file()

    out = _run("export_and_bench.py", "--model", str(saved), "--eval-images", "100", "--runs", "5",
               "--out-dir", str(tmp_path / "artefacts"), cwd=tmp_path)
    rows = re.findall(r"^(onnx|tflite)\s+(\S+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)%\s+([\d.]+)\s*$", out, re.M)
    assert [r[0] for r in rows] == ["onnx", "tflite"], out
    for fmt, quant, mib, export_top1, bench_top1, p50 in rows:
        assert quant == "int8", fmt
        assert 6.0 < float(mib) < 11.0, fmt  # 8.9 M int8 weights (80 % of ResNet-18): 8.7 MiB measured
        assert float(export_top1) > 80.0, fmt  # measured 88 % on these 100 images in both runtimes
        assert abs(float(export_top1) - float(bench_top1)) <= 1.0, fmt  # same file, same images, two paths
        assert float(p50) > 0.0, fmt
