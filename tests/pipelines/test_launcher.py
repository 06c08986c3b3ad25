"""``launcher: torchrun`` in recipes: validation, the command line the runner builds, and a real tiny run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgeslim
from edgeslim.io import read_header, state_sha256
from edgeslim.pipelines.launcher import finetune_spec, qat_spec, torchrun_command
from edgeslim.pipelines.recipe import Launcher, Recipe, RecipeError
from edgeslim.pipelines.runner import compress, plan
from edgeslim.pipelines.torchrun_finetune import SPEC_KEYS
from tests.cli.test_finetune import NET_PY

BASE: dict[str, Any] = {"model": "resnet18-fmnist", "prune": {"criterion": "l1", "target": "ratio=0.5"},
                        "finetune": {"epochs": 0.5, "lr": 0.05, "batch_size": 32}}


def test_launcher_torchrun_accepted_and_round_trips() -> None:
    r = Recipe.from_dict({**BASE, "launcher": "torchrun", "nproc_per_node": 3})
    assert r.launcher is Launcher.TORCHRUN and r.nproc_per_node == 3
    assert Recipe.from_dict(r.to_dict()) == r
    assert Recipe.from_dict(BASE).launcher is Launcher.LOCAL and Recipe.from_dict(BASE).nproc_per_node == 2


@pytest.mark.parametrize(("extra", "message"), [
    ({"launcher": "mpi"}, "launcher: 'mpi' is not allowed; allowed: local, torchrun"),
    ({"launcher": "torchrun", "finetune": {"epochs": 0}}, "launcher: torchrun re-launches the fine-tune and QAT "
                                                          "steps, which this recipe does not have"),
    ({"launcher": "torchrun", "nproc_per_node": 0}, "nproc_per_node: must be >= 1, got 0"),
    ({"launcher": "torchrun", "pipeline": "alternating", "quantize": {"scheme": "int8"}},
     "pipeline 'alternating' trains inside its own step: use launcher: local"),
])
def test_bad_launcher_settings_named(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(RecipeError, match=r"^r\.yaml: ") as info:
        Recipe.from_dict({**BASE, **extra}, source="r.yaml")
    assert message in str(info.value)


def test_command_line_and_spec_built_for_the_fine_tune(tmp_path: Path) -> None:
    r = Recipe.from_dict({**BASE, "launcher": "torchrun", "data": {"source": "fashion-mnist", "mean": [0.5],
                                                                   "std": [0.25]}, "seed": 7, "eval_samples": 300})
    spec = finetune_spec(r, Path("o/pruned.pt"), Path("o/tmp"))
    cmd = torchrun_command(spec, tmp_path, r.nproc_per_node)
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "edgeslim.pipelines.torchrun_finetune", str(tmp_path / "spec.json")]
    assert json.loads((tmp_path / "spec.json").read_text()) == spec == {
        "model": "o/pruned.pt", "weights": None, "data": "fashion-mnist", "mean": [0.5], "std": [0.25],
        "input_size": 32, "epochs": 0.5, "lr": 0.05, "batch_size": 32, "teacher": "resnet18-fmnist",
        "teacher_weights": None, "qat": None, "eval_limit": 300, "seed": 7, "device": "auto", "out": "o/tmp"}
    assert set(spec) == set(SPEC_KEYS)


def test_spec_built_for_qat() -> None:
    r = Recipe.from_dict({"model": "resnet18-fmnist", "launcher": "torchrun", "nproc_per_node": 4, "device": "cpu",
                          "quantize": {"scheme": "int8", "method": "qat", "qat_epochs": 0.25, "lr": 0.001}})
    assert r.launcher is Launcher.TORCHRUN  # QAT alone is enough to launch
    assert qat_spec(r, "net.py:build", "w.pt", Path("o/tmp")) == {
        "model": "net.py:build", "weights": "w.pt", "data": "fashion-mnist", "mean": None, "std": None,
        "input_size": 32, "epochs": 0.25, "lr": 0.001, "batch_size": 64, "teacher": "net.py:build",
        "teacher_weights": "w.pt", "qat": "int8", "eval_limit": 1000, "seed": 0, "device": "cpu", "out": "o/tmp"}


def test_tiny_recipe_fine_tunes_on_two_processes(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(NET_PY)
    rng = np.random.default_rng(0)
    y, yv = rng.integers(0, 2, 128), rng.integers(0, 2, 32)
    np.savez(tmp_path / "d.npz", x=(rng.random((128, 16, 16, 3)) * 120 + y[:, None, None, None] * 120).astype(np.uint8),
             y=y, x_val=(rng.random((32, 16, 16, 3)) * 120 + yv[:, None, None, None] * 120).astype(np.uint8), y_val=yv)
    recipe = Recipe.from_dict({
        "model": f"{tmp_path}/net.py:build", "data": f"npz:{tmp_path}/d.npz", "input_size": 16, "eval_samples": 32,
        "prune": {"criterion": "l1", "target": "ratio=0.5", "allocation": "uniform"},
        "finetune": {"epochs": 1, "lr": 0.1, "batch_size": 16, "distill": False},
        "export": {"formats": []}, "launcher": "torchrun", "nproc_per_node": 2})
    assert plan(recipe) == ["load", "prune", "finetune", "report"]
    out = tmp_path / "out"
    compress(recipe, out)

    state = json.loads((out / "state.json").read_text())
    ft = state["steps"]["finetune"]["data"]
    assert ft["torchrun"]["world_size"] == 2 and ft["torchrun"]["ranks_agree"] is True
    assert ft["steps"] == 4  # 128 images / 2 ranks / 16 per batch
    assert sum("ranks agree (2 of 2)" in ln for ln in ft["torchrun"]["rank_log"]) == 2
    model = edgeslim.load(out / "finetuned.pt")
    assert state_sha256(model.state_dict()) == ft["torchrun"]["weights_sha256"]
    last = read_header(out / "finetuned.pt")["meta"]["lineage"][-1]
    assert last["step"] == "finetune" and last["launcher"] == "torchrun" and last["world_size"] == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".torchrun-")]  # its temporary folder is gone
