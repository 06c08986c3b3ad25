from pathlib import Path

import torch

from tests.cli.conftest import last_json, run_cli


def _message(stderr: str) -> str:
    """The error text of a usage error with rich's panel borders and line wrapping removed."""
    return " ".join(stderr.replace("│", " ").split())


def test_demo_runs_end_to_end_on_real_data(tmp_path: Path) -> None:
    model = tmp_path / "resnet18_pruned.pt"
    model.write_bytes(b"an earlier model")
    args = ("demo", "--out", str(tmp_path), "--finetune-epochs", "0.02", "--test-limit", "1000", "--json")
    refused = run_cli(*args, check=False)
    msg = _message(refused.stderr)
    assert refused.returncode == 2, refused.stderr
    assert "resnet18_pruned.pt" in msg and "--force" in msg
    assert model.read_bytes() == b"an earlier model" and refused.stdout == ""
    proc = run_cli(*args, "--force")
    s = last_json(proc)
    assert s["model_path"] == str(model)
    assert torch.load(model, weights_only=True)["kind"] == "pruned"  # replaced by the pruned model
    assert s["reload_exact"] is True
    assert abs(s["params_after"] / s["params_before"] - 0.5) <= 0.01
    assert s["top1_before"] > 0.9 and s["top1_after"] > 0.8
    assert "top-1" in proc.stderr
