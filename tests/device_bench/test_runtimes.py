"""The shared runners: ONNX metadata read without the onnx package, settings applied, any batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tiny_models import make_onnx

from edgeslim.device_bench.runtimes import RUNNERS, RUNTIMES, RuntimeSpec
from edgeslim.device_bench.runtimes.litert import LiteRtRunner, guess_layout
from edgeslim.device_bench.runtimes.onnxruntime import GRAPH_OPTIMIZATION_KEY, OnnxRuntimeRunner, read_onnx_metadata


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = make_onnx(tmp_path_factory.mktemp("rt") / "m.onnx")
    return path


def with_metadata(src: Path, dest: Path, props: dict[str, str]) -> Path:
    model = onnx.load(str(src))
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(dest))
    return dest


def test_metadata_reader_agrees_with_onnx(tiny_onnx: Path, tmp_path: Path) -> None:
    assert read_onnx_metadata(tiny_onnx) == {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}
    props = {GRAPH_OPTIMIZATION_KEY: "disable_all", "edgeslim.version": "0.1.0", "naïve ключ": "välue " * 50}
    path = with_metadata(tiny_onnx, tmp_path / "meta.onnx", props)
    assert read_onnx_metadata(path) == {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert read_onnx_metadata(path).items() >= props.items()
    (tmp_path / "junk.onnx").write_bytes(b"\x0a\xff\xff\xff\xff\x0f")  # field 1, length-delimited, past the end
    with pytest.raises(ValueError, match="truncated"):
        read_onnx_metadata(tmp_path / "junk.onnx")


def test_session_settings_come_from_metadata_unless_given(tiny_onnx: Path, tmp_path: Path) -> None:
    level = ort.GraphOptimizationLevel
    plain = OnnxRuntimeRunner(tiny_onnx)
    assert plain.settings["graph_optimization_level"] == "enable_all" and plain.settings["allow_spinning"] is False
    assert plain.session.get_session_options().graph_optimization_level == level.ORT_ENABLE_ALL
    path = with_metadata(tiny_onnx, tmp_path / "off.onnx", {GRAPH_OPTIMIZATION_KEY: "disable_all"})
    off = OnnxRuntimeRunner(path, threads=1)
    assert off.session.get_session_options().graph_optimization_level == level.ORT_DISABLE_ALL
    assert off.settings == {"graph_optimization_level": "disable_all", "graph_optimization_source": "model metadata",
                            "intra_op_threads": 1, "allow_spinning": False}
    forced = OnnxRuntimeRunner(path, graph_optimization="enable_basic")
    assert forced.session.get_session_options().graph_optimization_level == level.ORT_ENABLE_BASIC
    with pytest.raises(ValueError, match="unknown ONNX Runtime graph optimization level 'fast'"):
        OnnxRuntimeRunner(with_metadata(tiny_onnx, tmp_path / "bad.onnx", {GRAPH_OPTIMIZATION_KEY: "fast"}))


def test_predict_splits_a_fixed_batch(tiny_onnx: Path) -> None:
    runner = OnnxRuntimeRunner(tiny_onnx)
    assert runner.batch == 1  # the tiny model is exported with a fixed 1x1x8x8 input
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    rows = [runner.run({"x": x[i : i + 1]})[0] for i in range(3)]
    np.testing.assert_array_equal(runner.predict(x), np.concatenate(rows))


def test_registry_is_made_from_the_runner_classes() -> None:
    assert [RUNTIMES.get(c.name) for c in RUNNERS] == [RuntimeSpec.of(c) for c in RUNNERS]
    assert RUNTIMES.get("tflite-runtime").wheels == ("numpy<2", "tflite-runtime")


def test_litert_layout_guess_and_arguments() -> None:
    assert guess_layout((1, 32, 32, 3)) == "nhwc" and guess_layout((1, 3, 32, 32)) == "nchw"
    with pytest.raises(ValueError, match="exactly one"):
        LiteRtRunner()
