from tests.cli.conftest import last_json, run_cli


def test_demo_runs_end_to_end_on_real_data(tmp_path) -> None:
    proc = run_cli("demo", "--out", str(tmp_path), "--finetune-epochs", "0.02", "--test-limit", "1000", "--json")
    s = last_json(proc)
    assert s["reload_exact"] is True
    assert abs(s["params_after"] / s["params_before"] - 0.5) <= 0.01
    assert s["top1_before"] > 0.9 and s["top1_after"] > 0.8
    assert "top-1" in proc.stderr
