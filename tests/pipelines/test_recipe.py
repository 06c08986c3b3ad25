"""Recipes: validation before any work (key paths, allowed values, file and line), round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgeslim.errors import ConfigError, EdgeslimError
from edgeslim.pipelines.recipe import (
    Pipeline,
    Recipe,
    RecipeError,
    Variant,
    load_recipe,
    parse_budget,
)
from edgeslim.plugin.pruning.config import Allocation, TargetKind
from edgeslim.plugin.quantization.config import Mode

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

FULL = {
    "title": "t",
    "model": "resnet18-fmnist",
    "data": "fashion-mnist",
    "input_size": 32,
    "eval_samples": 500,
    "seed": 3,
    "pipeline": "sequential",
    "prune": {"criterion": "l1", "target": "params=0.5", "allocation": "uniform", "round_to": 16},
    "finetune": {"epochs": 0.05, "lr": 0.01, "distill": True},
    "quantize": {"scheme": "w8a16", "method": "qat", "qat_epochs": 0.1, "calibration": 128},
    "export": {"formats": ["onnx", "tflite"], "max_drop": 1.5, "variants": ["original", "pruned+quantized"]},
    "bench": {"targets": ["local"], "runtimes": ["onnxruntime"], "input_size": 64, "runs": 5, "threads": 2},
}


def _error(data: dict, source: str = "r.yaml") -> str:
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(data, source=source)
    return str(info.value)


def test_full_recipe_parses_into_typed_sections() -> None:
    r = Recipe.from_dict(FULL)
    assert r.pipeline is Pipeline.SEQUENTIAL
    assert r.prune is not None and r.prune.target.kind is TargetKind.PARAMS and r.prune.target.value == 0.5
    assert r.prune.allocation is Allocation.UNIFORM and r.prune.round_to == 16
    assert r.quantize is not None and r.quantize.method is Mode.QAT and r.quantize.config().name == "w8a16"
    assert r.export.formats == ("onnx", "tflite") and r.export.variants == (Variant.ORIGINAL, Variant.PRUNED_QUANTIZED)
    assert r.bench is not None and r.bench.input_size == 64 and r.bench.runtimes == ("onnxruntime",)
    assert r.variants() == [Variant.ORIGINAL, Variant.PRUNED, Variant.QUANTIZED, Variant.PRUNED_QUANTIZED]


def test_round_trip_through_dict_yaml_and_json() -> None:
    r = Recipe.from_dict(FULL)
    d = r.to_dict()
    assert Recipe.from_dict(d) == r
    assert Recipe.from_dict(yaml.safe_load(r.to_yaml())) == r
    assert Recipe.from_dict(json.loads(json.dumps(d))) == r
    assert d["quantize"]["method"] == "qat" and d["export"]["variants"] == ["original", "pruned+quantized"]


@pytest.mark.parametrize("name", ["quick.yaml", "resnet18_case_study.yaml"])
def test_examples_are_valid_and_round_trip(name: str) -> None:
    r = load_recipe(EXAMPLES / name)
    assert Recipe.from_dict(r.to_dict()) == r


def test_quick_example_is_small() -> None:
    r = load_recipe(EXAMPLES / "quick.yaml")
    assert r.finetune.epochs <= 0.1 and r.eval_samples <= 1000
    assert r.quantize is not None and r.quantize.calibration <= 512
    assert set(r.export.formats) == {"onnx", "tflite"} and r.bench is not None and r.bench.runs <= 20


def test_minimal_recipe_gets_defaults() -> None:
    r = Recipe.from_dict({"model": "mobilenet_v2-fmnist"})
    assert r.prune is None and r.quantize is None and r.bench is None
    assert r.variants() == [Variant.ORIGINAL]
    assert r.export.formats == ("onnx",) and r.eval_samples == 1000


def test_unknown_key_names_its_path_the_closest_key_and_the_allowed_ones() -> None:
    msg = _error({**FULL, "prune": {"critrion": "l1"}})
    assert "r.yaml" in msg and "'prune.critrion'" in msg and "did you mean 'criterion'" in msg
    assert "allowed keys of prune:" in msg and "allocation" in msg and "round_to" in msg
    msg = _error({**FULL, "quantize": {"shceme": "int8"}})
    assert "'quantize.shceme'" in msg and "did you mean 'scheme'" in msg and "calibration" in msg
    msg = _error({"model": "resnet18-fmnist", "pipelin": "joint"})
    assert "'pipelin'" in msg and "did you mean 'pipeline'" in msg and "bench" in msg


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"pipeline": "jiont"}, ["pipeline:", "did you mean 'joint'", "sequential, alternating, joint"]),
        ({"prune": {"criterion": "l7"}}, ["prune.criterion", "'l7'", "l1", "taylor", "bn_scale"]),
        ({"prune": {"method": "struct"}}, ["prune.method", "structured, unstructured, hybrid"]),
        ({"prune": {"allocation": "greedy"}}, ["prune.allocation", "uniform, global, sensitivity"]),
        ({"prune": {"target": "params=2"}}, ["prune.target", "(0, 1)"]),
        ({"prune": {"target": "weights=0.5"}}, ["prune.target", "ratio", "params", "macs"]),
        ({"quantize": {"scheme": "int9"}}, ["quantize.scheme", "int9", "int8", "w8a16"]),
        ({"quantize": {"method": "dynamic"}}, ["quantize.method", "ptq, qat"]),
        ({"quantize": {"method": "qat"}}, ["quantize.qat_epochs", "> 0"]),
        ({"quantize": {"calibrator": "best"}}, ["quantize.calibrator", "minmax", "mse"]),
        ({"export": {"formats": ["onxx"]}}, ["export.formats", "did you mean 'onnx'", "onnx, tensorrt, tflite"]),
        ({"export": {"variants": ["prunedquantized"]}}, ["export.variants[0]", "pruned+quantized"]),
        ({"bench": {"runtimes": ["ort"]}}, ["bench.runtimes", "onnxruntime", "ai-edge-litert"]),
        ({"bench": {"targets": ["no-such-board"]}}, ["bench.targets[0]", "no-such-board", "local"]),
        ({"bench": {"runs": 0}}, ["bench.runs", ">= 1"]),
        ({"finetune": {"epochs": "fast"}}, ["finetune.epochs", "a number", "'fast'"]),
        ({"finetune": {"distill": "yes"}}, ["finetune.distill", "true or false"]),
        ({"data": "cifar10"}, ["data:", "fashion-mnist"]),
        ({"eval_samples": 0}, ["eval_samples", "1..10000"]),
        ({"model": "resnet81-fmnist"}, ["model:", "did you mean 'resnet18-fmnist'", "mobilenet_v2-fmnist"]),
        ({"model": "nowhere/model.pt"}, ["model:", "nowhere/model.pt", "does not exist"]),
        ({"pipeline": "joint"}, ["search:", "needs a search section"]),
        ({"search": {"budget": "speedup=2"}}, ["search:", "only used by pipeline 'joint'"]),
    ],
)
def test_bad_values_name_the_key_and_the_allowed_values(patch: dict, expected: list[str]) -> None:
    data = {**FULL, **patch}
    msg = _error(data)
    for text in expected:
        assert text in msg, f"{text!r} not in {msg!r}"


def test_search_section_checks_budget_kind_and_values() -> None:
    base = {"model": "resnet18-fmnist", "pipeline": "joint", "quantize": {"scheme": "int8"}}
    msg = _error({**base, "search": {"budget": "speed=5"}})
    assert "search.budget" in msg and "did you mean 'speedup'" in msg and "latency_ms, speedup, bytes, macs" in msg
    msg = _error({**base, "search": {"budget": "speedup=5", "bits": [4, 8]}})
    assert "search.bits" in msg and "[8]" in msg
    msg = _error({**base, "search": {"budget": "speedup=5", "runtime": "tensorrt"}})
    assert "search.runtime" in msg and "allowed: ai-edge-litert, onnxruntime" in msg
    r = Recipe.from_dict({**base, "search": {"budget": "bytes=5MB", "round_to": 16}})
    assert r.search is not None and r.search.round_to == (16,)
    assert parse_budget("bytes=5MB") == ("bytes", 5e6) and parse_budget("speedup=5") == ("speedup", 5.0)


def test_alternating_needs_prune_quantize_and_training() -> None:
    base = {"model": "resnet18-fmnist", "pipeline": "alternating"}
    assert "prune" in _error({**base, "quantize": {"scheme": "int8"}})
    assert "quantize" in _error({**base, "prune": {"target": "params=0.5"}})
    msg = _error({**base, "prune": {"target": "params=0.5"}, "quantize": {"scheme": "int8"}})
    assert "finetune.epochs" in msg


def test_errors_are_config_errors_not_tracebacks() -> None:
    with pytest.raises(ConfigError):
        Recipe.from_dict({"model": 3})
    with pytest.raises(EdgeslimError, match="expected a mapping"):
        Recipe.from_dict(["model", "resnet18-fmnist"])
    with pytest.raises(RecipeError, match="model: missing"):
        Recipe.from_dict({"prune": {"target": "params=0.5"}})


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("model: resnet18-fmnist\nprune:\n  criterion: l1\n  target: [params=0.5\nquantize: {scheme: int8}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(p)
    msg = str(info.value)
    assert f"{p}:" in msg and "YAML syntax error" in msg
    line = int(msg.split(f"{p}:")[1].split(":", maxsplit=1)[0])
    assert 4 <= line <= 5


def test_bad_key_in_file_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("model: resnet18-fmnist\nexport:\n  formats: [onnx]\n  max_dorp: 2\n")
    with pytest.raises(RecipeError, match=r"r\.yaml: unknown key 'export\.max_dorp' \(did you mean 'max_drop'\?\)"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_loading_never_modifies_the_file(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    text = yaml.safe_dump(FULL)
    p.write_text(text)
    load_recipe(p)
    assert p.read_text() == text


def test_device_key_parsed_round_tripped_and_checked() -> None:
    assert Recipe.from_dict({"model": "resnet18-fmnist"}).device == "auto"
    r = Recipe.from_dict({"model": "resnet18-fmnist", "device": "CUDA:1"})
    assert r.device == "cuda:1" and Recipe.from_dict(r.to_dict()) == r  # syntax here; the GPU is checked at run time
    for bad in ("gpu", "cuda:x", 1):
        with pytest.raises(RecipeError) as info:
            Recipe.from_dict({"model": "resnet18-fmnist", "device": bad}, source="r.yaml")
        assert str(info.value) == (f"r.yaml: device: {bad!r} is not a torch device; allowed: auto, cpu, cuda, cuda:N "
                                   "(where training, calibration and evaluation run; bench targets go in bench.targets)")
