"""The fleet bench's tables and Markdown, from a results JSON shaped like ``FleetReport.summary()``."""

from __future__ import annotations

from typing import Any

from edgeslim.report.fleet import comparison_table, device_table, render_fleet_markdown


def _row(artifact: str, target: str, p50: float | None, ratio: float | None, error: str | None = None) -> dict[str, Any]:
    ok = error is None
    return {"artifact": artifact, "target": target, "status": "ok" if ok else "failed", "p50": p50,
            "p90": p50 and p50 * 1.5, "p99": p50 and p50 * 2, "load_ms": 12.34 if ok else None,
            "peak_rss_mb": 80.0 if ok else None, "runtime": "onnxruntime" if ok else None,
            "runtime_version": "1.32.0" if ok else None, "top1": 0.75 if ok else None, "ratio_p50": ratio,
            **({"error": error} if error else {})}


DOWN = "connection to ssh://pi@10.0.0.9:22 refused: no SSH server listens on port 22 (start sshd on the device or fix the port)"
SUMMARY: dict[str, Any] = {
    "artifacts": ["/m/fp32.onnx", "/m/int8|q.onnx"],
    "settings": {"runs": 50, "warmup": 5, "threads": 0, "runtime": "auto", "inputs": None},
    "command": "edgeslim bench fp32.onnx int8.onnx --target local --target pi4",
    "targets": [
        {"target": "local", "device": "local", "status": "ok", "error": None, "seconds": 3.21,
         "results": [_row("/m/fp32.onnx", "local", 20.0, 1.0), _row("/m/int8|q.onnx", "local", 5.0, 0.25)]},
        {"target": "pi4", "device": "ssh://pi@10.0.0.9:22", "status": "failed", "error": DOWN, "seconds": 0.1,
         "results": [_row("/m/fp32.onnx", "pi4", None, None, DOWN), _row("/m/int8|q.onnx", "pi4", None, None, DOWN)]},
    ],
    "comparison": {"reference_target": "local", "targets": ["local", "pi4"], "rows": [
        {"artifact": "/m/fp32.onnx", "p50": {"local": 20.0, "pi4": None}, "ratio": {"local": 1.0, "pi4": None}},
        {"artifact": "/m/int8|q.onnx", "p50": {"local": 5.0, "pi4": 12.5}, "ratio": {"local": 1.0, "pi4": 2.5}},
    ]},
    "failures": 2,
}


def test_device_tables_show_numbers_or_the_error() -> None:
    ok = device_table(SUMMARY["targets"][0])
    assert ok.title == "local" and "Error" not in ok.headers
    assert ok.rows[1] == ["int8|q.onnx", "ok", "onnxruntime 1.32.0", "5.000", "7.500", "10.000", "12.3", "80.0",
                          "75.00", "0.25×"]
    down = device_table(SUMMARY["targets"][1])
    assert down.title == "pi4 (ssh://pi@10.0.0.9:22)" and down.headers[-1] == "Error"
    assert down.rows[0][:4] == ["fp32.onnx", "failed", "", "-"] and down.rows[0][-1] == DOWN
    assert f"Error: {DOWN}" in down.note


def test_comparison_table_is_artefact_by_device() -> None:
    table = comparison_table(SUMMARY)
    assert table.headers == ["Artefact", "local p50 (ms)", "local vs local", "pi4 p50 (ms)", "pi4 vs local"]
    assert table.rows == [["fp32.onnx", "20.000", "1.00×", "not measured", "not measured"],
                          ["int8|q.onnx", "5.000", "1.00×", "12.500", "2.50×"]]


def test_markdown_has_a_table_per_device_and_the_comparison() -> None:
    md = render_fleet_markdown(SUMMARY)
    assert md.startswith("# edgeslim bench on 2 devices\n")
    assert md.index("### local") < md.index("### pi4 (ssh://pi@10.0.0.9:22)") < md.index("## Comparison")
    assert "| int8\\|q.onnx | 5.000 | 1.00× | 12.500 | 2.50× |" in md  # the pipe in a name is escaped
    assert "runs=50, warmup=5, threads=0, runtime=auto" in md and "inputs=" not in md
    assert "no SSH server listens on port 22" in md and "**Failures:** 2" in md
