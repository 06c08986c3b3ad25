"""``compress``: a tiny recipe end to end on the real bundled model and real data; resume; refusals.

One module-scoped run is interrupted right after its ``quantize`` step (the event handler raises)
and then resumed; the tests below read that run's folder. The refusal tests use a recipe without
pruning, quantization or export (``load`` + ``report`` only: seconds).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeslim.pipelines.recipe import Recipe
from edgeslim.pipelines.runner import STATE_FILE, compress, plan
from edgeslim.pipelines.steps import CompressError

TINY = {
    "model": "resnet18-fmnist",
    "eval_samples": 500,
    "prune": {"criterion": "l1", "target": "params=0.5", "allocation": "uniform", "round_to": 16},
    "quantize": {"scheme": "int8", "calibration": 64, "calibrator": "minmax"},
    "export": {"formats": ["onnx"], "variants": ["original", "pruned+quantized"], "verify_samples": 32},
    "bench": {"targets": ["local"], "runs": 3, "warmup": 1, "threads": 1},
}
#: load + report only.
CHEAP = {"model": "resnet18-fmnist", "eval_samples": 100, "export": {"formats": []}}


class Interrupt(Exception):
    """Raised by the event handler to simulate a kill right after a step."""


def _digests(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("compress")
    recipe_file = root / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(TINY))
    recipe_text = recipe_file.read_bytes()
    out = root / "out"
    events: list[dict[str, Any]] = []

    def stop_after_quantize(event: dict[str, Any]) -> None:
        events.append(event)
        if event["event"] == "step" and event["step"] == "quantize" and event["status"] == "done":
            raise Interrupt

    with pytest.raises(Interrupt):
        compress(recipe_file, out, on_event=stop_after_quantize)
    state = json.loads((out / STATE_FILE).read_text())
    before = _digests(out)
    second: list[dict[str, Any]] = []
    results = compress(recipe_file, out, on_event=second.append)
    return {"out": out, "recipe_file": recipe_file, "recipe_text": recipe_text, "state": state, "before": before,
            "results": results, "events": events, "second": second}


def test_interrupted_run_recorded_its_finished_steps(resumed_run: dict[str, Any]) -> None:
    state = resumed_run["state"]
    assert [k for k, v in state["steps"].items() if v["status"] == "done"] == ["load", "prune", "quantize"]
    for name in ("pruned.pt", "quantized.pt", "pruned_quantized.pt"):
        assert name in resumed_run["before"]
    assert "results.json" not in resumed_run["before"]
    outputs = state["steps"]["quantize"]["outputs"]
    assert set(outputs) == {"quantized.pt", "pruned_quantized.pt"} and all(len(d) == 64 for d in outputs.values())


def test_rerun_resumes_finished_steps_and_keeps_their_files(resumed_run: dict[str, Any]) -> None:
    steps = {s["name"]: s["status"] for s in resumed_run["results"]["steps"]}
    assert steps == {"load": "resumed", "prune": "resumed", "quantize": "resumed", "export": "done",
                     "bench": "done", "report": "done"}
    after = _digests(resumed_run["out"])
    for name, digest in resumed_run["before"].items():
        if name != STATE_FILE:
            assert after[name] == digest, f"{name} was rewritten on resume"
    started = [e["step"] for e in resumed_run["second"] if e["event"] == "step" and e["status"] == "start"]
    assert started == ["export", "bench", "report"]


def test_results_hold_real_numbers(resumed_run: dict[str, Any]) -> None:
    out = resumed_run["out"]
    results = json.loads((out / "results.json").read_text())
    assert results["rows"] == resumed_run["results"]["rows"]
    rows = {r["variant"]: r for r in results["rows"]}
    assert list(rows) == ["original", "pruned", "quantized", "pruned+quantized"]
    orig, pruned, quant, pq = rows["original"], rows["pruned"], rows["quantized"], rows["pruned+quantized"]
    assert orig["top1"] > 0.85 and quant["top1"] > 0.85
    assert abs(quant["top1"] - orig["top1"]) < 0.02  # int8 PTQ costs (almost) nothing
    assert 0.45 < pruned["params"] / orig["params"] < 0.55 and pruned["macs"] < orig["macs"]
    assert pq["params"] == pruned["params"] and quant["params"] == orig["params"]
    assert pq["top1"] > 0.3  # pruned without fine-tune: far above chance (0.1)
    assert quant["bytes"] < 0.3 * orig["files"]["resnet18_fmnist.pt"]
    assert orig["file"] == "original.onnx" and pq["file"] == "pruned_quantized.onnx"
    assert pq["bytes"] == (out / "pruned_quantized.onnx").stat().st_size < 0.2 * orig["bytes"]
    assert pq["top1_runtime"]["onnx"] == pytest.approx(pq["top1"], abs=0.02)
    for row in (orig, pq):
        assert row["latency_ms"]["onnxruntime@local"] > 0
    # (no latency ordering asserted: at 32x32 with 3 runs on shared cores both are ~0.4 ms of noise)
    assert rows["pruned"]["latency_ms"] == {}  # not exported (export.variants)
    layers = {layer["name"]: layer for layer in results["layers"]}
    assert layers["conv1"]["channels_before"] == 64 and layers["conv1"]["channels_after"] % 16 == 0
    assert layers["fc"]["channels_after"] == 10 and layers["fc"]["keep_ratio"] == 1.0
    assert {layer["bits"] for layer in results["layers"]} == {8}
    assert results["recipe"] == Recipe.from_dict(TINY).to_dict()
    assert results["commit"] and results["created"] and "compress" in results["command"]


def test_report_and_artefacts_written(resumed_run: dict[str, Any]) -> None:
    out = resumed_run["out"]
    for name in ("report.html", "report.md", "results.json", "original.onnx", "pruned_quantized.onnx",
                 "bench.jsonl", "recipe.resolved.yaml"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "pruned+quantized" in (out / "report.html").read_text()
    assert not list(out.glob(".*.tmp")) and not (out / "bench.partial.jsonl").exists()


def test_third_run_resumes_everything(resumed_run: dict[str, Any]) -> None:
    results = compress(resumed_run["recipe_file"], resumed_run["out"])
    assert {s["status"] for s in results["steps"]} == {"resumed"}
    assert results["rows"] == resumed_run["results"]["rows"]


def test_user_recipe_untouched_and_different_recipe_refused(resumed_run: dict[str, Any], tmp_path: Path) -> None:
    assert resumed_run["recipe_file"].read_bytes() == resumed_run["recipe_text"]
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**TINY, "eval_samples": 400}))
    before = _digests(resumed_run["out"])
    with pytest.raises(CompressError, match=r"different recipe.*--force"):
        compress(other, resumed_run["out"])
    assert _digests(resumed_run["out"]) == before


def test_plan_of_the_pipelines() -> None:
    assert plan(Recipe.from_dict(TINY)) == ["load", "prune", "quantize", "export", "bench", "report"]
    assert plan(Recipe.from_dict({**TINY, "finetune": {"epochs": 0.1}}))[:3] == ["load", "prune", "finetune"]
    assert plan(Recipe.from_dict(CHEAP)) == ["load", "report"]


def test_non_empty_folder_refused_then_forced_without_touching_other_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    recipe = out / "my-recipe.yaml"  # an input inside the output folder
    recipe.write_text(yaml.safe_dump(CHEAP))
    with pytest.raises(CompressError, match=r"not empty.*--force"):
        compress(recipe, out)
    assert sorted(p.name for p in out.iterdir()) == ["my-recipe.yaml", "notes.txt"]
    results = compress(recipe, out, force=True)
    assert (out / "notes.txt").read_text() == "mine" and recipe.read_text() == yaml.safe_dump(CHEAP)
    assert [r["variant"] for r in results["rows"]] == ["original"] and results["rows"][0]["top1"] > 0.85
    assert (out / "report.html").is_file() and (out / "results.json").is_file()
    # the same recipe again resumes without --force; a corrupted output reruns its step
    (out / "results.json").write_text("{}")
    again = compress(recipe, out)
    assert {s["name"]: s["status"] for s in again["steps"]} == {"load": "resumed", "report": "done"}
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]


def test_an_input_named_like_an_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    recipe = out / "results.json"
    recipe.write_text(json.dumps(CHEAP))
    with pytest.raises(CompressError, match="is an input of this run"):
        compress(recipe, out, force=True)
    assert json.loads(recipe.read_text()) == CHEAP


def test_saved_model_file_as_input_is_read_not_modified(tmp_path: Path, resnet18_fmnist: Any) -> None:
    import edgeslim

    model_file = edgeslim.save(resnet18_fmnist, tmp_path / "mine.pt")
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    results = compress(Recipe.from_dict({**CHEAP, "model": str(model_file)}), tmp_path / "out")
    assert results["rows"][0]["top1"] > 0.85 and results["rows"][0]["file"] == "mine.pt"
    assert hashlib.sha256(model_file.read_bytes()).hexdigest() == digest


def test_a_failed_step_keeps_what_finished_in_results_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeslim.pipelines import runner

    def broken_quantize(_ctx: Any) -> dict[str, Any]:
        raise CompressError("calibration data unreadable (simulated)")

    monkeypatch.setitem(runner.STEP_FUNCS, "quantize", broken_quantize)
    recipe = Recipe.from_dict({**CHEAP, "quantize": {"scheme": "int8", "calibration": 16}})
    out = tmp_path / "out"
    with pytest.raises(CompressError, match="simulated"):
        compress(recipe, out)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "failed" and results["failed_step"] == "quantize"
    assert "calibration data unreadable (simulated)" in results["error"]
    assert [r["variant"] for r in results["rows"]] == ["original"]  # the quantized variant was never measured
    assert results["rows"][0]["top1"] > 0.8 and results["rows"][0]["bytes"] > 40e6
    assert {s["name"]: s["status"] for s in results["steps"]} == {"load": "done", "quantize": "failed"}
    assert not (out / "report.html").exists()
