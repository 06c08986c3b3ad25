"""TFLite export, run in the real ai-edge-litert interpreter on real images."""

from __future__ import annotations

from pathlib import Path

import ai_edge_quantizer  # noqa: F401  (the tflite extra is a CI requirement: missing, it fails here, never skips)
import litert_torch  # noqa: F401
import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter

from edgeslim.exporters import export, inspect_artifact


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    ys = []
    for i in range(len(x)):
        it.set_tensor(inp["index"], x[i : i + 1])
        it.invoke()
        ys.append(it.get_tensor(out["index"]))
    return np.concatenate(ys)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_fp32_layouts(tiny_model, real_images, example, tmp_path: Path, layout: str) -> None:
    res = export(tiny_model, "tflite", tmp_path / "m.tflite", example, layout=layout, verify_inputs=real_images[:32])
    assert res.verification is not None and res.verification.max_abs_error < 1e-4
    x = real_images[:8].numpy()
    expect = (1, 3, 32, 32) if layout == "nchw" else (1, 32, 32, 3)
    assert tuple(res.input["shape"]) == expect
    feed = x if layout == "nchw" else x.transpose(0, 2, 3, 1).copy()
    np.testing.assert_allclose(_run(res.path, feed), tiny_model(real_images[:8]).detach().numpy(), atol=1e-4)
    # inspection flags every float compute op, including the residual ADDs
    fl = inspect_artifact(res.path).float_compute_ops()
    assert sum(op.type == "ADD" for op in fl) == 2


def test_int8_float_io_is_really_int8(tiny_model, real_images, example, tmp_path: Path) -> None:
    res = export(tiny_model, "tflite", tmp_path / "q.tflite", example, quant="int8", calibration=real_images[64:],
                 verify_inputs=real_images[:64])
    info = inspect_artifact(res.path)
    assert info.float_compute_ops() == []  # no float ADD left
    assert set(info.compute_dtypes()) == {"int8"}
    assert info.inputs[0].dtype == "float32" and info.outputs[0].dtype == "float32"
    assert info.op_counts()["QUANTIZE"] >= 1 and info.op_counts()["DEQUANTIZE"] >= 1
    got = _run(res.path, real_images[:64].numpy())
    agree = (got.argmax(1) == tiny_model(real_images[:64]).argmax(1).numpy()).mean()
    assert agree >= 0.9


def test_int8_quantized_io_carries_scale_and_zero_point(tiny_model, real_images, example, tmp_path: Path) -> None:
    res = export(tiny_model, "tflite", tmp_path / "q8io.tflite", example, quant="int8", io_dtype="int8", layout="nhwc",
                 calibration=real_images[64:], verify_inputs=real_images[:64])
    assert res.input["dtype"] == "int8" and res.input["scale"] > 0 and res.input["zero_point"] is not None
    x = real_images[:32].numpy().transpose(0, 2, 3, 1)
    q = np.clip(np.round(x / res.input["scale"]) + res.input["zero_point"], -128, 127).astype(np.int8)
    it = Interpreter(model_path=str(res.path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    preds = []
    for i in range(len(q)):
        it.set_tensor(inp["index"], q[i : i + 1])
        it.invoke()
        preds.append(int(it.get_tensor(out["index"]).argmax()))
    ref = tiny_model(real_images[:32]).argmax(1).numpy()
    assert (np.array(preds) == ref).mean() >= 0.9


@pytest.mark.parametrize(("quant", "weights", "compute"), [("fp16", "float16", "float32"), ("dynamic", "int8", "float32"),
                                                          ("w8a16", "int8", "int16")])
def test_other_precisions(tiny_model, real_images, example, tmp_path: Path, quant: str, weights: str, compute: str) -> None:
    res = export(tiny_model, "tflite", tmp_path / f"{quant}.tflite", example, quant=quant, calibration=real_images[64:],
                 verify_inputs=real_images[:32])
    info = inspect_artifact(res.path)
    assert weights in info.weight_dtypes()
    assert compute in info.compute_dtypes()
    assert res.verification is not None and res.verification.passed


def test_prequantized_int8_is_carried_over_with_its_own_scales(tiny_model, real_images, example, tmp_path: Path) -> None:
    import edgeslim
    from edgeslim.plugin.quantization.io import graph_constants

    q = edgeslim.quantize(tiny_model, (example,), "int8", calibration=[(real_images[64:], torch.zeros(64))])
    res = export(q, "tflite", tmp_path / "q.tflite", example, verify_inputs=real_images[:64])
    assert res.quant == "int8" and res.verification is not None and res.verification.passed
    info = inspect_artifact(res.path)
    # every conv runs in int8; the classifier, whose output the PT2E graph leaves in float, stays float
    assert [op.type for op in info.float_compute_ops()] == ["FULLY_CONNECTED"]
    assert info.op_counts()["CONV_2D"] == 6 and info.compute_dtypes().get("int8", 0) >= 8
    # the TFLite conv weights carry edgeslim's per-channel scales (no re-calibration by ai-edge-quantizer)
    ours = sorted(tuple(np.round(v.numpy(), 9)) for k, v in graph_constants(q.model).items()
                  if k.startswith("_scale") and v.dim() == 1 and v.numel() > 1)
    it = Interpreter(model_path=str(res.path))
    theirs = sorted(tuple(np.round(d["quantization_parameters"]["scales"].astype(np.float32), 9))
                    for d in it.get_tensor_details()
                    if d["dtype"] == np.int8 and len(d["shape"]) >= 2 and d["quantization_parameters"]["scales"].size > 1)
    assert len(ours) == 7 and len(theirs) == 6 and set(theirs) < set(ours)  # 6 convs; the float fc has none
    got = _run(res.path, real_images[:64].numpy())
    with torch.no_grad():
        want = q.model(real_images[:64]).numpy()
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95


def test_what_tflite_cannot_represent_is_refused_naming_the_layer(tiny_model, real_images, example, tmp_path: Path) -> None:
    import edgeslim
    from edgeslim.exporters import ExportConfigError

    calib = [(real_images[64:], torch.zeros(64))]
    q = edgeslim.quantize(tiny_model, (example,), "log2:4/log2:5", calibration=calib)
    with pytest.raises(ExportConfigError, match=r"layer \S+ has log2 activations .* export this model to ONNX"):
        export(q, "tflite", tmp_path / "x.tflite", example)
    q16 = edgeslim.quantize(tiny_model, (example,), "int16", calibration=calib)
    with pytest.raises(ExportConfigError, match=r"layer \S+ has (torch.int16 weights|int16 activations)"):
        export(q16, "tflite", tmp_path / "y.tflite", example)
    w8a16 = edgeslim.quantize(tiny_model, (example,), "w8a16", calibration=calib)
    with pytest.raises(ExportConfigError, match=r"layer \(the model input x\) has int16 activations: .* --quant w8a16"):
        export(w8a16, "tflite", tmp_path / "z.tflite", example)
    assert not list(tmp_path.iterdir())


def test_int16_is_refused_for_tflite_with_the_offered_precisions(tiny_model, example, tmp_path: Path) -> None:
    from edgeslim.exporters import ExportConfigError

    with pytest.raises(ExportConfigError, match=r"'int16' is not offered for TFLite; offered: fp32, .*w8a16"):
        export(tiny_model, "tflite", tmp_path / "x.tflite", example, quant="int16")
    assert not list(tmp_path.iterdir())


def test_export_prints_no_litert_progress_unless_verbose(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """litert-torch's ``[START] LiteRT-Torch Convert > ...`` lines and its C++ op count: only with verbose=True."""
    import os

    torch.manual_seed(0)
    nn = torch.nn
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.randn(1, 3, 16, 16)
    capfd.readouterr()
    export(m, "tflite", tmp_path / "a.tflite", x, verify_inputs=torch.randn(4, 3, 16, 16))
    quiet = capfd.readouterr()
    assert "LiteRT-Torch Convert" not in quiet.out + quiet.err and "[START]" not in quiet.out + quiet.err
    assert "Estimated count of arithmetic ops" not in quiet.err
    assert "LITERT_TORCH_SHOW_PROGRESS" not in os.environ  # set for the conversion only
    export(m, "tflite", tmp_path / "b.tflite", x, verify_inputs=torch.randn(4, 3, 16, 16), verbose=True)
    loud = capfd.readouterr()
    assert "[START] LiteRT-Torch Convert" in loud.err and loud.out == ""
    assert (tmp_path / "a.tflite").read_bytes() == (tmp_path / "b.tflite").read_bytes()
