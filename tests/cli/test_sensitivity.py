from pathlib import Path

from tests.cli.conftest import last_json, run_cli


def _message(stderr: str) -> str:
    """The error text of a usage error with rich's panel borders and line wrapping removed."""
    return " ".join(stderr.replace("│", " ").split())


def test_sensitivity_cli_table_plot_allocation(tmp_path: Path) -> None:
    (tmp_path / "sensitivity.md").write_text("old table")  # left by an earlier run
    args = ("sensitivity", "--model", "resnet18-fmnist", "--criterion", "l1", "--ratios", "0.4,0.8",
            "--batches", "1", "--target", "params=0.5", "--out", str(tmp_path), "--json")
    refused = run_cli(*args, check=False)
    msg = _message(refused.stderr)
    assert refused.returncode == 2, refused.stderr
    assert "sensitivity.md" in msg and "--force" in msg and "sensitivity.json" not in msg
    assert (tmp_path / "sensitivity.md").read_text() == "old table"
    assert [p.name for p in tmp_path.iterdir()] == ["sensitivity.md"]  # refused before any work
    proc = run_cli(*args, "--force")
    s = last_json(proc)
    assert s["groups"] == 12 and 0.85 < s["base_accuracy"] <= 1.0
    assert abs(s["params_after"] / s["params_before"] - 0.5) <= 0.01
    assert set(s["allocation"]) and max(s["allocation"].values()) > 0
    assert (tmp_path / "sensitivity.png").stat().st_size > 10_000
    assert "layer4.1.conv1" in (tmp_path / "sensitivity.md").read_text()  # replaced with --force
    # now every output exists: a run without --force names all three and leaves them alone
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["sensitivity.json", "sensitivity.md", "sensitivity.png"]
    again = run_cli(*args, check=False)
    assert again.returncode == 2
    assert "sensitivity.json, sensitivity.md, sensitivity.png" in _message(again.stderr)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
