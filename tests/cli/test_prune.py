import json
import re
from pathlib import Path

import pytest
import torch

import edgeslim
from edgeslim.cli.prune import output_names
from edgeslim.plugin.pruning import Allocation, Method, PruneConfig, Target
from tests.cli.conftest import last_json, run_cli


def _message(stderr: str) -> str:
    """The error text of a usage error with rich's panel borders and line wrapping removed."""
    return " ".join(stderr.replace("│", " ").split())


def test_prune_contract_resnet18_l1_params_half(tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "summary.json").write_text("old summary")  # an output other than the model, from an earlier run
    refused = run_cli("prune", "--model", "resnet18-fmnist", "--criterion", "l1", "--target", "params=0.5",
                      "--out", str(out), check=False)
    msg = _message(refused.stderr)
    assert refused.returncode == 2, refused.stderr
    assert "summary.json" in msg and "--force" in msg and "model.pt" not in msg  # names only what exists
    assert (out / "summary.json").read_text() == "old summary"
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]  # nothing else written
    proc = run_cli("prune", "--model", "resnet18-fmnist", "--criterion", "l1", "--target", "params=0.5",
                   "--out", str(out), "--json", "--force")
    s = last_json(proc)
    assert json.loads((out / "summary.json").read_text())["params_after"] == s["params_after"]  # replaced
    for key in ("params_before", "params_after", "macs_before", "macs_after", "bytes_before", "bytes_after"):
        assert isinstance(s[key], int) and s[key] > 0
    assert abs(s["params_after"] / s["params_before"] - 0.5) <= 0.01
    model = edgeslim.load(out / "model.pt")
    assert isinstance(model, torch.nn.Module)
    assert sum(p.numel() for p in model.parameters()) == s["params_after"]
    raw = torch.load(out / "model.pt", weights_only=True)
    assert raw["kind"] == "pruned"
    assert (out / "sensitivity.png").exists() and (out / "summary.json").exists()
    # a second run without --force names every existing output and changes none of them
    before = {name: (out / name).read_bytes() for name in ("model.pt", "summary.json", "sensitivity.json", "sensitivity.png")}
    again = run_cli("prune", "--model", "resnet18-fmnist", "--target", "params=0.5", "--out", str(out), check=False)
    msg = _message(again.stderr)
    assert again.returncode == 2, again.stderr
    assert "model.pt, summary.json, sensitivity.json, sensitivity.png" in msg and "--force" in msg
    assert {name: (out / name).read_bytes() for name in before} == before


def test_prune_refuses_a_leftover_sensitivity_plot(tmp_path: Path) -> None:
    (tmp_path / "sensitivity.png").write_bytes(b"old plot")
    p = run_cli("prune", "--model", "resnet18-fmnist", "--target", "params=0.5", "--out", str(tmp_path), check=False)
    msg = _message(p.stderr)
    assert p.returncode == 2 and "sensitivity.png" in msg and "--force" in msg
    assert (tmp_path / "sensitivity.png").read_bytes() == b"old plot"
    assert [f.name for f in tmp_path.iterdir()] == ["sensitivity.png"]


@pytest.mark.parametrize(
    ("config", "names"),
    [
        (PruneConfig(target=Target.parse("ratio=0.3")), ["model.pt", "summary.json"]),
        (PruneConfig(target=Target.parse("params=0.5"), allocation=Allocation.UNIFORM), ["model.pt", "summary.json"]),
        (PruneConfig(target=Target.parse("params=0.5"), allocation=Allocation.SENSITIVITY),
         ["model.pt", "summary.json", "sensitivity.json", "sensitivity.png"]),
        (PruneConfig(target=Target.parse("ratio=0.3"), allocation=Allocation.SENSITIVITY), ["model.pt", "summary.json"]),
        (PruneConfig(method=Method.UNSTRUCTURED, target=Target.parse("sparsity=0.5"), allocation=Allocation.SENSITIVITY),
         ["model.pt", "summary.json"]),
    ],
)
def test_prune_output_names(config: PruneConfig, names: list[str]) -> None:
    assert output_names(config) == names


def test_prune_eval_and_finetune_on_saved_model(tmp_path: Path) -> None:
    """Uniform pruning of the saved model, a short fine-tune, with --eval: accuracies reported on the test set."""
    src = tmp_path / "mnv2.pt"
    edgeslim.save(edgeslim.load_model("mobilenet_v2-fmnist"), src)
    proc = run_cli("prune", "--model", str(src), "--target", "ratio=0.2", "--allocation", "uniform",
                   "--finetune-epochs", "0.03", "--eval", "--test-limit", "2000", "--out", str(tmp_path / "o"), "--json")
    s = last_json(proc)
    assert 0.91 <= s["top1_before"] <= 0.94  # 92.35 % reference
    assert s["top1_after"] > s["top1_pruned"]  # fine-tuning helped
    assert s["params_after"] < s["params_before"]


def test_prune_bad_inputs_fail_clearly(tmp_path: Path) -> None:
    p = run_cli("prune", "--model", "resnet18-fmnist", "--target", "params=1.5", "--out", str(tmp_path), check=False)
    assert p.returncode == 2 and "params target must be in (0, 1)" in p.stderr
    p = run_cli("prune", "--model", "resnet18-fmnist", "--criterion", "l1", "--target", "params=0.5",
                "--data-dir", str(tmp_path / "nodata"), "--out", str(tmp_path), check=False)
    assert p.returncode == 2 and "dataset-fashion-mnist" in p.stderr
    p = run_cli("prune", "--model", "resnet180", "--allocation", "uniform", "--out", str(tmp_path), check=False)
    assert p.returncode == 2 and "unknown model 'resnet180'" in p.stderr
    assert not any(tmp_path.iterdir())  # nothing written


NET_PY = """
from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
"""


def test_prune_unreachable_target_offers_and_accepts_the_nearest(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(NET_PY)
    args = ["prune", "--model", f"{tmp_path / 'net.py'}:build", "--criterion", "l1", "--allocation", "uniform",
            "--target", "params=0.05", "--ignore", "0", "--ignore", "6", "--input-size", "16"]
    refused = run_cli(*args, "--out", str(tmp_path / "a"), check=False)
    msg = _message(refused.stderr)
    assert refused.returncode == 2, refused.stderr
    found = re.search(r"params=0\.05 cannot be reached for Sequential: the nearest reachable plan keeps (0\.\d{3}) of "
                      r"the original params \(wanted 0\.050 of the original params; max_layer_ratio=0\.9, "
                      r"round_to=None, ignored layers: 0, 6\); rerun with --accept-nearest", msg)
    assert found, msg
    assert not (tmp_path / "a").exists()
    s = last_json(run_cli(*args, "--out", str(tmp_path / "b"), "--accept-nearest", "--json"))
    assert s["target_met"] is False and s["nearest"]["kind"] == "params" and s["nearest"]["wanted"] == 0.05
    assert f"{s['nearest']['value']:.3f}" == found.group(1)  # reaches exactly what the refusal offered
    assert s["params_fraction"] == s["nearest"]["value"] == s["params_after"] / s["params_before"]
    saved = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert saved["nearest"] == s["nearest"] and saved["config"]["accept_nearest"] is True


MULT_PY = """
from torch import nn


def build():  # the second conv has two outputs per input channel: torch-pruning cannot cut the first conv's channels
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, groups=16),
                         nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10))
"""


def test_prune_json_and_summary_list_the_layers_left_whole(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(MULT_PY)
    proc = run_cli("prune", "--model", f"{tmp_path / 'net.py'}:build", "--criterion", "l2", "--allocation", "uniform",
                   "--target", "ratio=0.5", "--input-size", "16", "--out", str(tmp_path / "o"), "--json")
    s = last_json(proc)
    whole = [{"module": "0", "reason": "torch-pruning cannot remove input channels of the grouped conv 2 "
                                      "(groups=16, 2 outputs per input channel)"}]
    assert s["left_whole"] == whole
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["left_whole"] == whole
    assert "left whole: 1 layers (0); reasons in summary.json" in " ".join(proc.stderr.split())
