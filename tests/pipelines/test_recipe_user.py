"""Recipes with your model (``model: net.py:build`` + ``weights:``) and your data (``data:``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeslim.errors import DataError
from edgeslim.pipelines.recipe import DataSection, Recipe, RecipeError
from edgeslim.pipelines.steps import Context, run_load

NET_PY = """
from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    net = tmp_path / "net.py"
    net.write_text(NET_PY)
    rng = np.random.default_rng(0)
    npz = tmp_path / "d.npz"
    np.savez(npz, x=rng.integers(0, 256, (12, 10, 10), dtype=np.uint8), y=np.arange(12) % 3)
    weights = tmp_path / "w.pt"
    from edgeslim import models

    torch.save(models.load(f"{net}:build").state_dict(), weights)
    return {"net": net, "npz": npz, "weights": weights}


def test_user_model_and_data_round_trip(files: dict[str, Path]) -> None:
    data = {
        "model": f"{files['net']}:build",
        "weights": str(files["weights"]),
        "data": {"source": f"npz:{files['npz']}", "mean": [0.5], "std": [0.5]},
        "input_size": 10,
    }
    r = Recipe.from_dict(data)
    assert r.data == DataSection(f"npz:{files['npz']}", (0.5,), (0.5,)) and r.weights == str(files["weights"])
    assert Recipe.from_dict(r.to_dict()) == r
    plain = Recipe.from_dict({"model": "resnet18-fmnist"})
    assert plain.to_dict()["data"] == "fashion-mnist" and plain.data.source == "fashion-mnist"
    assert Recipe.from_dict({"model": "resnet18-fmnist", "data": "npz:x.npz"}).data.source == "npz:x.npz"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"model": "missing.py:build"}, "model: file 'missing.py' of 'missing.py:build' does not exist"),
        ({"model": "resnet18-fmnist", "weights": "w.pt"}, "weights: 'resnet18-fmnist' carries its own weights"),
        ({"weights": "nowhere.pt"}, "weights: file 'nowhere.pt' does not exist"),
        ({"data": "csv:x.csv"}, "data: unknown data source 'csv'; known: fashion-mnist, imagefolder, npz, python"),
        ({"data": {"source": "npz:x.npz", "mean": "a"}}, "data.mean"),
        ({"data": {"source": "npz:x.npz", "std": [0.0]}}, "data.std: values must be positive"),
        ({"data": {"sorce": "npz:x.npz"}}, "unknown key 'data.sorce' (did you mean 'source'?)"),
    ],
)
def test_bad_user_model_or_data_named(files: dict[str, Path], patch: dict, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict({"model": f"{files['net']}:build", **patch}, source="r.yaml")
    assert message in str(info.value) and str(info.value).startswith("r.yaml: ")


def test_context_reads_the_recipes_model_and_data(files: dict[str, Path], tmp_path: Path) -> None:
    r = Recipe.from_dict(
        {
            "model": f"{files['net']}:build",
            "weights": str(files["weights"]),
            "data": f"npz:{files['npz']}",
            "input_size": 10,
            "eval_samples": 5,
        }
    )
    ctx = Context(r, tmp_path / "out", lambda _e: None)
    assert ctx.example().shape == (1, 1, 10, 10)  # the data's channels
    assert ctx.eval_key == f"npz:{files['npz'].resolve()}/train[:5]@10x10"
    assert sum(len(y) for _, y in ctx.calibration()) == 12 and sum(len(y) for _, y in ctx.eval_loader()) == 5
    loaded = run_load(ctx)
    first = loaded["lineage"][0]
    assert first["factory"] == "build" and first["weights"] == str(files["weights"].resolve())
    assert list(first["top1"]) == [ctx.eval_key] and 0 <= loaded["top1"] <= 1
    narrow = tmp_path / "narrow.npz"
    np.savez(narrow, x=np.zeros((4, 10, 10), np.uint8), y=np.array([0, 1, 2, 7]))
    bad = Context(Recipe.from_dict({"model": f"{files['net']}:build", "data": f"npz:{narrow}"}), tmp_path / "o", print)
    with pytest.raises(
        DataError, match=r"narrow\.npz: training labels range over \[0, 7\] but the model has 3 outputs"
    ):
        bad.original()


def test_changed_user_code_or_weights_is_a_different_run_not_a_resume(files: dict[str, Path]) -> None:
    from edgeslim.pipelines.runner import recipe_id

    recipe = Recipe.from_dict({"model": f"{files['net']}:build", "weights": str(files["weights"])})
    first = recipe_id(recipe)
    assert recipe_id(recipe) == first
    state = torch.load(files["weights"], weights_only=True)
    torch.save({k: v + 1 for k, v in state.items()}, files["weights"])  # new weights at the same path
    second = recipe_id(recipe)
    assert second != first
    files["net"].write_text(NET_PY.replace("nn.Conv2d(1, 8, 3)", "nn.Conv2d(1, 8, 5)"))  # the user edits the model
    assert recipe_id(recipe) not in (first, second)
