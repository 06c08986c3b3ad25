"""Per-layer cross-runtime report on real artefacts."""

from __future__ import annotations

from pathlib import Path

from edgeslim.exporters import export
from edgeslim.exporters.layerwise import default_layers, layerwise_report, plot_report


def test_layerwise_report_onnx_and_tflite(tiny_model, real_images, example, tmp_path: Path) -> None:
    import litert_torch  # noqa: F401  (tflite extra, installed in CI: missing, it fails, never skips)
    common = {"calibration": real_images[64:], "verify": False}
    onnx8 = export(tiny_model, "onnx", tmp_path / "q.onnx", example, quant="int8", **common).path
    tfl8 = export(tiny_model, "tflite", tmp_path / "q.tflite", example, quant="int8", **common).path
    fp32 = export(tiny_model, "onnx", tmp_path / "f.onnx", example, verify=False).path
    layers = default_layers(tiny_model)
    assert layers == ["stem.0", "stem.1", "stem.2", "layer1.0", "layer1.1", "down.0", "down.1", "down.2", "fc"]
    layers = ["stem", "layer1.0", "layer1.1", "down", "fc"]
    report = layerwise_report(tiny_model, {"onnx int8": onnx8, "tflite int8": tfl8, "onnx fp32": fp32},
                              real_images[:16], layers)
    rows = report.rows()
    assert [r["layer"] for r in rows] == layers
    for r in rows:
        assert r["onnx fp32"]["rel_error"] < 1e-4  # fp32 reproduces every layer
        for label in ("onnx int8", "tflite int8"):
            assert r[label] is not None, (label, r["layer"])
            assert 1e-4 < r[label]["rel_error"] < 0.3 and r[label]["cosine"] > 0.95
    assert report.worst("onnx int8") in layers
    png = plot_report(report, tmp_path / "lw.png")
    assert png.stat().st_size > 5000
