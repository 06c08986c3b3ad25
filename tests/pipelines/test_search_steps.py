"""``compress`` with ``pipeline: alternating`` and ``pipeline: joint`` on the real bundled ResNet-18."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeslim.pipelines.recipe import Recipe
from edgeslim.pipelines.runner import STATE_FILE, compress, plan

BASE = {
    "model": "resnet18-fmnist",
    "eval_samples": 300,
    "quantize": {"scheme": "int8", "calibration": 64, "calibrator": "minmax"},
    "export": {"formats": []},
}


@pytest.mark.slow
def test_alternating_pipeline_prunes_and_quantizes_in_one_run(tmp_path: Path) -> None:
    recipe = Recipe.from_dict({
        **BASE, "pipeline": "alternating", "alternating_events": 2,
        "prune": {"criterion": "l1", "target": "params=0.5", "round_to": 16},
        "finetune": {"epochs": 0.02, "lr": 0.005, "distill": True},
    })
    assert plan(recipe) == ["load", "alternating", "quantize", "report"]
    out = tmp_path / "out"
    results = compress(recipe, out)
    rows = {r["variant"]: r for r in results["rows"]}
    assert list(rows) == ["original", "pruned", "quantized", "pruned+quantized"]
    assert 0.4 < rows["pruned"]["params"] / rows["original"]["params"] < 0.6
    assert rows["pruned+quantized"]["params"] == rows["pruned"]["params"]
    assert rows["pruned+quantized"]["file"] == "pruned_quantized.pt" and "qat" in rows["pruned+quantized"]["notes"].lower()
    assert rows["pruned+quantized"]["top1"] > 0.2 and rows["quantized"]["top1"] > 0.85
    state = json.loads((out / STATE_FILE).read_text())
    assert set(state["steps"]["alternating"]["outputs"]) == {"pruned.pt", "pruned_quantized.pt"}
    assert set(state["steps"]["quantize"]["outputs"]) == {"quantized.pt"}  # the original only
    assert any(layer["keep_ratio"] < 1 for layer in results["layers"])


@pytest.mark.slow
def test_joint_pipeline_searches_then_applies_the_plan(tmp_path: Path) -> None:
    recipe = Recipe.from_dict({
        **BASE, "pipeline": "joint",
        "search": {"budget": "bytes=8MB", "keep_ratios": [0.5, 1.0], "round_to": [16], "groups": [r"layer4\..*"],
                   "input_size": 32, "runs": 5, "max_front": 1, "eval_samples": 100, "threads": 1},
    })
    assert plan(recipe) == ["load", "search", "quantize", "report"]
    out = tmp_path / "out"
    results = compress(recipe, out)
    rows = {r["variant"]: r for r in results["rows"]}
    assert results["search"]["chosen"]["bytes"] <= 8e6 and results["search"]["front"]
    assert results["search"]["budget"]["bytes"] == 8e6
    layers = {layer["name"]: layer for layer in results["layers"]}
    assert layers["layer1.0.conv1"]["keep_ratio"] == 1.0  # outside the searched groups
    assert min(layer["keep_ratio"] for name, layer in layers.items() if name.startswith("layer4")) < 1.0
    assert (out / "search.json").is_file() and (out / "pruned.pt").is_file()
    assert rows["pruned+quantized"]["params"] == rows["pruned"]["params"] < rows["original"]["params"]
