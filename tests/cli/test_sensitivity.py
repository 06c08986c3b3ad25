from pathlib import Path

from tests.cli.conftest import last_json, run_cli


def test_sensitivity_cli_table_plot_allocation(tmp_path: Path) -> None:
    proc = run_cli("sensitivity", "--model", "resnet18-fmnist", "--criterion", "l1", "--ratios", "0.4,0.8",
                   "--batches", "1", "--target", "params=0.5", "--out", str(tmp_path), "--json")
    s = last_json(proc)
    assert s["groups"] == 12 and 0.85 < s["base_accuracy"] <= 1.0
    assert abs(s["params_after"] / s["params_before"] - 0.5) <= 0.01
    assert set(s["allocation"]) and max(s["allocation"].values()) > 0
    assert (tmp_path / "sensitivity.png").stat().st_size > 10_000
    assert "layer4.1.conv1" in (tmp_path / "sensitivity.md").read_text()
