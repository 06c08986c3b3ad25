from pathlib import Path

import torch

import edgeslim
from tests.cli.conftest import last_json, run_cli


def test_prune_contract_resnet18_l1_params_half(tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    proc = run_cli("prune", "--model", "resnet18-fmnist", "--criterion", "l1", "--target", "params=0.5",
                   "--out", str(out), "--json")
    s = last_json(proc)
    for key in ("params_before", "params_after", "macs_before", "macs_after", "bytes_before", "bytes_after"):
        assert isinstance(s[key], int) and s[key] > 0
    assert abs(s["params_after"] / s["params_before"] - 0.5) <= 0.01
    model = edgeslim.load(out / "model.pt")
    assert isinstance(model, torch.nn.Module)
    assert sum(p.numel() for p in model.parameters()) == s["params_after"]
    raw = torch.load(out / "model.pt", weights_only=True)
    assert raw["kind"] == "pruned"
    assert (out / "sensitivity.png").exists() and (out / "summary.json").exists()
    # an existing model is not overwritten without --force
    again = run_cli("prune", "--model", "resnet18-fmnist", "--target", "params=0.5", "--out", str(out), check=False)
    assert again.returncode != 0 and "--force" in again.stderr


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
