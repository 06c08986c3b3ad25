"""uint8 weights (U8U8): value-preserving, and free of ONNX Runtime's x86 U8S8 int16 saturation."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper
from onnx import helper as oh
from tests.exporters.conftest import u8s8_overflows
from torch import nn

from edgeslim.exporters import export, inspect_artifact
from edgeslim.exporters.config import ActivationType, Tolerance
from edgeslim.exporters.onnx import OnnxExporter
from edgeslim.exporters.qdq import weights_to_uint8


def _session(path: Path, level: ort.GraphOptimizationLevel) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _dq_matmul(weights: np.ndarray) -> onnx.ModelProto:
    """``DQ(x: uint8, zp 128) @ DQ(w: int8 per-channel)``: the shape ORT fuses into MatMulIntegerToFloat."""
    k, n = weights.shape
    graph = oh.make_graph(
        [oh.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
         oh.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=1),
         oh.make_node("MatMul", ["xf", "wf"], ["y"])],
        "dq_matmul", [oh.make_tensor_value_info("x", TensorProto.UINT8, [1, 17, k])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 17, n])],
        [numpy_helper.from_array(np.array(0.02, np.float32), "xs"), numpy_helper.from_array(np.array(128, np.uint8), "xz"),
         numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.full(n, 0.01, np.float32), "ws"),
         numpy_helper.from_array(np.zeros(n, np.int8), "wz")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_uint8_weights_compute_the_exact_matmul_where_u8s8_may_saturate(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (192, 256)).astype(np.int8)  # full-range neighbours: the worst case for vpmaddubsw
    x = rng.integers(0, 256, (1, 17, 192)).astype(np.uint8)
    exact = ((x.astype(np.float64) - 128) * 0.02) @ (w.astype(np.float64) * 0.01)
    path = tmp_path / "mm.onnx"
    onnx.save(_dq_matmul(w), str(path))
    u8 = tmp_path / "mm_u8.onnx"
    shutil.copy(path, u8)
    assert weights_to_uint8(u8) == 1
    saved = onnx.load(str(u8))
    assert {i.name: i.data_type for i in saved.graph.initializer}["w_as_uint8"] == TensorProto.UINT8
    assert not any(i.name in {"w", "wz"} for i in saved.graph.initializer)  # the int8 copies are gone
    fused = _session(u8, ort.GraphOptimizationLevel.ORT_ENABLE_ALL).run(None, {"x": x})[0]
    assert np.abs(fused - exact).max() / np.abs(exact).max() < 1e-5
    if u8s8_overflows():  # what the re-encoding is for, on this CPU: the int8 file's fused kernel saturates
        s8 = _session(path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL).run(None, {"x": x})[0]
        assert np.abs(s8 - exact).max() / np.abs(exact).max() > 0.05


@pytest.fixture(scope="module")
def wide_linear_q8(real_images):  # type: ignore[no-untyped-def]
    """A two-layer MLP with uniform weights (many near ±127 per channel), PT2E int8 on real images."""
    import edgeslim

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(real_images[0].numel(), 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        model[1].weight.uniform_(-1, 1)
        model[3].weight.uniform_(-1, 1)
    return edgeslim.quantize(model, (real_images[:1],), "int8",
                             calibration=[(real_images[64:], torch.zeros(64, dtype=torch.long))])


def test_u8u8_keeps_every_value_of_the_u8s8_artefact(wide_linear_q8, real_images, tmp_path: Path) -> None:
    x = real_images[:1]
    a = export(wide_linear_q8, "onnx", tmp_path / "u8s8.onnx", x, activations="u8s8", verify_inputs=real_images[:64],
               tolerance=Tolerance(0.9, 0.5))
    b = export(wide_linear_q8, "onnx", tmp_path / "u8u8.onnx", x, activations="u8u8", verify_inputs=real_images[:64])
    assert a.metadata["activations"] == "u8s8" and b.metadata["activations"] == "u8u8"
    dtypes = [inspect_artifact(r.path).weight_dtypes() for r in (a, b)]
    assert dtypes[0].get("int8", 0) >= 2 and "int8" not in dtypes[1] and dtypes[1]["uint8"] >= 2
    feed = {"input": real_images[:16].numpy()}
    ref = [_session(r.path, ort.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, feed)[0] for r in (a, b)]
    np.testing.assert_array_equal(ref[0], ref[1])  # reference Q/DQ kernels: the same values
    assert b.verification is not None and b.verification.cosine > 0.9999  # fused U8U8 kernels vs PyTorch int8


def test_a_u8s8_export_that_fails_verification_is_reencoded_and_verified_again(
    wide_linear_q8, real_images, tmp_path: Path
) -> None:
    strict = Tolerance(min_cosine=0.9999, min_top1_agreement=0.99)
    x = real_images[:1]
    res = export(wide_linear_q8, "onnx", tmp_path / "q.onnx", x, activations="u8s8", verify_inputs=real_images[:64],
                 tolerance=strict)
    assert res.verification is not None and res.verification.cosine >= 0.9999
    if res.metadata["activations"] == "u8u8":  # the u8s8 file failed here: the reason is kept
        assert "the file failed as it was" in res.metadata["u8u8_reason"] and "cosine" in res.metadata["u8u8_reason"]
    if u8s8_overflows():
        assert res.metadata["activations"] == "u8u8"
    # the hook itself: a default u8s8 file is re-encoded in place, an s8s8 file is kept and a u8u8 copy verified
    if not u8s8_overflows():
        return
    for acts in ("u8s8", "s8s8"):
        path = tmp_path / f"{acts}.onnx"
        out = export(wide_linear_q8, "onnx", path, x, activations=acts, verify=False)
        job = SimpleNamespace(metadata=dict(out.metadata), options=SimpleNamespace(activations=ActivationType(acts)))
        got = OnnxExporter().retry_after_verification_failure(job, path, RuntimeError("cosine 0.9"))
        assert got is not None
        note, check = got
        if acts == "u8s8":
            assert check == path and note == "the u8s8 file failed first and was re-encoded as u8u8"
            assert job.metadata["activations"] == "u8u8" and "int8" not in inspect_artifact(path).weight_dtypes()
        else:
            assert check != path and check.parent != tmp_path and "value-identical u8u8 copy" in note
            assert job.metadata["activations"] == "s8s8" and "cosine 0.9" in job.metadata["verified_as"]
            assert "int8" in inspect_artifact(path).weight_dtypes()  # the asked-for file is untouched
            assert set(inspect_artifact(check).weight_dtypes()) - {"float32"} == {"uint8"}
            check.unlink()


def test_when_both_encodings_fail_the_error_says_so_and_no_file_is_left(wide_linear_q8, real_images, tmp_path: Path) -> None:
    from edgeslim.exporters import ExportVerificationError

    out = tmp_path / "q.onnx"
    with pytest.raises(ExportVerificationError) as info:
        export(wide_linear_q8, "onnx", out, real_images[:1], activations="u8s8", verify_inputs=real_images[:64],
               tolerance=Tolerance(min_cosine=1.5, min_top1_agreement=0.5))  # no artefact can pass
    msg = str(info.value)
    if u8s8_overflows():
        assert "the u8s8 file failed first and was re-encoded as u8u8; it fails too" in msg
    else:  # no saturation to work around: one try
        assert "re-encoded" not in msg
    assert "required cosine >= 1.5" in str(info.value) and info.value.report.cosine > 0.9
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_default_encoding_is_u8u8_exactly_where_u8s8_saturates(wide_linear_q8, real_images, tmp_path: Path) -> None:
    res = export(wide_linear_q8, "onnx", tmp_path / "q.onnx", real_images[:1], verify_inputs=real_images[:64])
    assert res.options["activations"] == "auto"
    expected = "u8u8" if u8s8_overflows() else "u8s8"
    assert res.metadata["activations"] == expected and res.metadata["activations_auto"].startswith(expected)
    assert res.verification is not None and res.verification.cosine > 0.999
