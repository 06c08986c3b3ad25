"""``edgeslim compress``: the real command on a small recipe, ``--json``, and bad recipes' exit messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import yaml

from tests.cli.conftest import EDGESLIM, last_json, run_cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _small_recipe(tmp_path: Path) -> Path:
    """examples/quick.yaml cut down to load -> export (ONNX) -> bench -> report (the pruning and
    quantization steps are exercised by tests/pipelines/test_runner.py)."""
    quick = yaml.safe_load((EXAMPLES / "quick.yaml").read_text())
    for key in ("finetune", "prune", "quantize"):
        quick.pop(key)
    quick["eval_samples"] = 300
    quick["export"] = {"formats": ["onnx"], "variants": ["original"], "verify_samples": 32}
    quick["bench"] = {"targets": ["local"], "runs": 3, "warmup": 1, "threads": 1, "input_size": 48}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(quick))
    return path


def test_compress_writes_report_and_results_and_json_summary(tmp_path: Path) -> None:
    recipe = _small_recipe(tmp_path)
    out = tmp_path / "run"
    proc = run_cli("compress", str(recipe), "--out", str(out), "--json")
    summary = last_json(proc)
    assert summary["out"] == str(out)
    assert summary["report_html"] == str(out / "report.html") and summary["results_json"] == str(out / "results.json")
    for key in ("report_html", "results_json", "report_md"):
        assert Path(summary[key]).is_file()
    results = json.loads((out / "results.json").read_text())
    assert summary["rows"] == results["rows"]
    (row,) = results["rows"]
    assert row["variant"] == "original" and row["top1"] > 0.85 and row["latency_ms"]["onnxruntime@local"] > 0
    assert row["bytes"] == (out / "original.onnx").stat().st_size and row["top1_runtime"]["onnx"] > 0.85
    # latency at bench.input_size comes from a clearly named latency-only copy at 48x48
    copy = out / "original.latency-only-48x48.onnx"
    assert copy.is_file() and "latency-only" in row["notes"] and "48x48" in row["notes"]
    (bench,) = [json.loads(ln) for ln in (out / "bench.jsonl").read_text().splitlines()]
    assert bench["artifact"] == str(copy) and bench["status"] == "ok"
    assert "load" in proc.stderr and "report" in proc.stderr  # progress on stderr, JSON alone on stdout
    assert len([ln for ln in proc.stdout.splitlines() if ln.strip()]) == 1

    again = run_cli("compress", str(recipe), "--out", str(out), "--json")
    assert {s["status"] for s in last_json(again)["steps"]} == {"resumed"}
    assert "resumed" in again.stderr

    other = tmp_path / "other.yaml"
    other.write_text(recipe.read_text().replace("eval_samples: 300", "eval_samples: 200"))
    refused = run_cli("compress", str(other), "--out", str(out), check=False)
    assert refused.returncode == 2 and "--force" in refused.stderr and "different recipe" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_bad_recipe_exits_with_the_key_and_allowed_values(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: resnet18-fmnist\nprune:\n  critrion: l1\n")
    proc = run_cli("compress", str(bad), "--out", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2
    msg = " ".join(proc.stderr.split())
    assert "RecipeError" in msg and "'prune.critrion'" in msg and "did you mean 'criterion'" in msg
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()

    bad.write_text("model: resnet18-fmnist\nexport: {formats: [onnx, tflite]\n")
    proc = run_cli("compress", str(bad), "--out", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2 and f"{bad}:" in proc.stderr and "YAML syntax error" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_help_lists_the_command() -> None:
    proc = run_cli("compress", "--help")
    assert "--out" in proc.stdout and "--force" in proc.stdout and "--json" in proc.stdout


def test_killed_run_resumes_from_the_last_finished_step(tmp_path: Path) -> None:
    """SIGKILL right after the ``load`` step (inside ``export``), then the same command again."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": "resnet18-fmnist", "eval_samples": 200,
                                      "export": {"formats": ["onnx"], "verify_samples": 16}}))
    out = tmp_path / "run"
    env = {**os.environ, "COLUMNS": "120"}
    proc = subprocess.Popen([*EDGESLIM, "compress", str(recipe), "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            steps = json.loads((out / "state.json").read_text())["steps"]
        except (OSError, ValueError, KeyError):
            steps = {}
        if steps.get("load", {}).get("status") == "done":
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert json.loads((out / "state.json").read_text())["steps"]["load"]["status"] == "done"  # never half-written
    again = run_cli("compress", str(recipe), "--out", str(out), "--json")
    steps = {s["name"]: s["status"] for s in last_json(again)["steps"]}
    assert steps["load"] == "resumed" and steps["report"] in ("done", "resumed")
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".edgeslim-compress.lock"]
    assert leftovers == []  # temporary files of the killed export were cleaned up
    results = json.loads((out / "results.json").read_text())
    assert results["rows"][0]["top1"] > 0.85 and results["rows"][0]["file"] == "original.onnx"
