"""ONNX export, run in the real ONNX Runtime on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tests.exporters.conftest import u8s8_overflows

from edgeslim.exporters import ExportConfigError, export, inspect_artifact
from edgeslim.exporters.onnx import OrtRunner


def _initializer_bytes(path: Path) -> tuple[int, int]:
    """``(integer, float)`` bytes of the initializers stored in an ONNX file (codes/int8 weights, scales/biases)."""
    integer = floating = 0
    for init in onnx.load(str(path)).graph.initializer:
        size = len(init.raw_data) if init.raw_data else onnx.numpy_helper.to_array(init).nbytes
        if init.data_type == onnx.TensorProto.FLOAT:
            floating += size
        else:
            integer += size
    return integer, floating


def test_fp32_matches_torch_and_has_dynamic_batch_and_size(tiny_model, real_images, example, tmp_path: Path) -> None:
    res = export(tiny_model, "onnx", tmp_path / "m.onnx", example, verify_inputs=real_images, optimized_copy=True)
    onnx.checker.check_model(str(res.path), full_check=True)
    assert Path(res.metadata["optimized_copy"]).is_file()
    assert res.verification is not None and res.verification.passed
    assert res.verification.max_abs_error < 1e-4 and res.verification.top1_agreement == 1.0
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": real_images[:7].numpy()})[0]
    np.testing.assert_allclose(out, tiny_model(real_images[:7]).detach().numpy(), atol=1e-4)
    big = sess.run(None, {"input": torch.nn.functional.interpolate(real_images[:2], size=(64, 64)).numpy()})[0]
    assert big.shape == (2, 10)  # height/width are dynamic too
    info = inspect_artifact(res.path)
    assert info.compute_dtypes() == {"float32": len(info.float_compute_ops())}
    saved = onnx.load(str(res.path))
    props = {p.key: p.value for p in saved.metadata_props}
    assert props["edgeslim.ort.graph_optimization_level"] == "enable_all" and OrtRunner(res.path).optimized
    # no stack traces (the user's source paths) or FX records per node; the module scopes stay for layerwise
    node_keys = {p.key for n in saved.graph.node for p in n.metadata_props}
    assert node_keys == {"pkg.torch.onnx.name_scopes"}


@pytest.mark.parametrize(("activations", "dtype"), [("u8s8", "uint8"), ("s8s8", "int8"), ("u8u8", "uint8")])
def test_int8_is_really_int8(tiny_model, real_images, example, tmp_path: Path, activations: str, dtype: str) -> None:
    res = export(tiny_model, "onnx", tmp_path / "q.onnx", example, quant="int8", activations=activations,
                 calibration=real_images[64:], verify_inputs=real_images[:64])
    v = res.verification
    assert v is not None and v.passed
    if activations == "u8s8" and u8s8_overflows():
        # ORT's U8S8 kernels saturate int16 pair sums on this CPU (x86 without VNNI): 93.75 % raw agreement
        # here; the samples that are not near-ties still agree
        assert v.decisive_top1_agreement is not None and v.decisive_top1_agreement >= 0.95
    else:
        assert v.top1_agreement >= 0.95
    info = inspect_artifact(res.path)
    assert info.float_compute_ops() == []
    assert set(info.compute_dtypes()) == {dtype}
    weights = "uint8" if activations == "u8u8" else "int8"
    assert info.weight_dtypes().get(weights, 0) >= 7  # every conv + fc weight
    assert res.metadata["activations"] == activations


def test_w8a16_uses_int16_activations_and_runs_unoptimized(tiny_model, real_images, example, tmp_path: Path) -> None:
    res = export(tiny_model, "onnx", tmp_path / "w16.onnx", example, quant="w8a16", calibration=real_images[64:],
                 verify_inputs=real_images[:64])
    assert set(inspect_artifact(res.path).compute_dtypes()) == {"uint16"}
    assert res.metadata["ort_graph_optimization"].startswith("disabled")
    assert res.verification is not None and res.verification.cosine > 0.999
    props = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}  # the setting travels in the file
    assert props["edgeslim.ort.graph_optimization_level"] == "disable_all" and props["edgeslim.version"]
    runner = OrtRunner(res.path)
    assert not runner.optimized and runner.settings["graph_optimization_source"] == "model metadata"


def test_int16_is_w16a16_by_onnx_runtime_and_by_edgeslim_pt2e(tiny_model, real_images, example, tmp_path: Path) -> None:
    import edgeslim

    rt = export(tiny_model, "onnx", tmp_path / "rt.onnx", example, quant="w16a16", calibration=real_images[64:],
                verify_inputs=real_images[:64])
    calib = [(real_images[64:], torch.zeros(64, dtype=torch.long))]
    q16 = edgeslim.quantize(tiny_model, (example,), "int16", calibration=calib)
    pt = export(q16, "onnx", tmp_path / "pt2e16.onnx", example, verify_inputs=real_images[:64])
    for res, acts in ((rt, "u16s16"), (pt, "s16s16")):
        info = inspect_artifact(res.path)
        assert res.quant == "int16" and res.metadata["activations"] == acts
        assert info.float_compute_ops() == [] and info.weight_dtypes().get("int16", 0) >= 7
        assert res.metadata["ort_graph_optimization"].startswith("disabled")
        assert res.verification is not None and res.verification.cosine > 0.9999
    assert pt.verification is not None and pt.verification.max_abs_error < 1e-3  # vs the PT2E int16 model


def test_edgeslim_pt2e_int8_and_coded_log2(tiny_model, real_images, example, tmp_path: Path) -> None:
    import edgeslim

    calib = [(real_images[64:], torch.zeros(64, dtype=torch.long))]
    q8 = edgeslim.quantize(tiny_model, (example,), "int8", calibration=calib)
    r8 = export(q8, "onnx", tmp_path / "pt2e.onnx", example, verify_inputs=real_images[:64])
    assert r8.quant == "int8" and "PT2E" in r8.metadata["route"]
    assert inspect_artifact(r8.path).float_compute_ops() == []
    assert r8.verification is not None and r8.verification.top1_agreement >= 0.95
    # PT2E graphs come out S8S8; the default re-encodes activations as uint8 (U8S8, ORT's fast x86 kernels), and
    # the weights too on x86 without VNNI, where ORT's U8S8 kernels saturate (U8U8)
    assert r8.metadata["activations"] == ("u8u8" if u8s8_overflows() else "u8s8")
    assert set(inspect_artifact(r8.path).compute_dtypes()) == {"uint8"}
    s8 = export(q8, "onnx", tmp_path / "pt2e_s8.onnx", example, activations="s8s8", verify_inputs=real_images[:64])
    assert s8.metadata["activations"] == "s8s8" and set(inspect_artifact(s8.path).compute_dtypes()) == {"int8"}
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # reference Q/DQ kernels
    outs = [ort.InferenceSession(str(p), plain, providers=["CPUExecutionProvider"]).run(None, {"input": real_images[:16].numpy()})[0]
            for p in (r8.path, s8.path)]
    np.testing.assert_array_equal(outs[0], outs[1])  # the re-encoding changes no value

    ql = edgeslim.quantize(tiny_model, (example,), "log2:4", calibration=calib)
    rl = export(ql, "onnx", tmp_path / "log2.onnx", example, verify_inputs=real_images[:64])
    assert rl.quant == "log2:4" and rl.metadata["coded"]["lowered"] >= 5
    model = onnx.load(str(rl.path))
    assert any(i.data_type == onnx.TensorProto.UINT4 for i in model.graph.initializer)
    # measured in the two files: 4-bit codes + per-channel int8 codebooks vs the int8 weights of the PT2E int8 artefact
    int8_bytes, int8_float = _initializer_bytes(r8.path)
    log2_bytes, log2_float = _initializer_bytes(rl.path)
    assert log2_float == int8_float  # the same float scales and biases: no weight is left in float
    assert log2_bytes < 0.7 * int8_bytes  # 9.5 vs 14.7 kB for this model (codebooks weigh on 16-channel layers)
    assert rl.verification is not None and rl.verification.cosine > 0.999  # vs the PT2E log2 model

    qp = edgeslim.quantize(tiny_model, (example,), "pwl:4", calibration=calib)  # two-segment levels: codes too
    rp = export(qp, "onnx", tmp_path / "pwl.onnx", example, verify_inputs=real_images[:64])
    pwl_bytes, pwl_float = _initializer_bytes(rp.path)
    assert rp.quant == "pwl:4" and pwl_float == int8_float and pwl_bytes < 0.7 * int8_bytes
    # vs the PT2E pwl model; on x86 without VNNI the codebooks are uint8 too (an int8 codebook gave 0.993 there)
    assert rp.verification is not None and rp.verification.cosine > 0.999
    for r in (rl, rp):
        books = [i for i in onnx.load(str(r.path)).graph.initializer if i.name.endswith("__codebook")]
        want = onnx.TensorProto.UINT8 if u8s8_overflows() else onnx.TensorProto.INT8
        assert books and {b.data_type for b in books} == {want}, r.quant
        assert r.metadata["activations"] == ("u8u8" if u8s8_overflows() else "u8s8")


def test_onnx_refuses_options_it_cannot_honour(tiny_model, example, tmp_path: Path) -> None:
    with pytest.raises(ExportConfigError, match="NCHW"):
        export(tiny_model, "onnx", tmp_path / "x.onnx", example, layout="nhwc")
    with pytest.raises(ExportConfigError, match="not offered for ONNX"):
        export(tiny_model, "onnx", tmp_path / "x.onnx", example, quant="fp16")
    with pytest.raises(ExportConfigError, match=r"'w4a8' is valid but no exporter offers it; offered: .*int16"):
        export(tiny_model, "onnx", tmp_path / "x.onnx", example, quant="w4a8")
    assert not list(tmp_path.iterdir())
