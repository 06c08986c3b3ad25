"""The on-device agent: self-contained, same runtime names as the host, local runs of both runtimes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import make_tflite

from edgeslim.device_bench import agent, bench
from edgeslim.device_bench.agent_build import build_agent
from edgeslim.device_bench.errors import DeviceConfigError
from edgeslim.device_bench.runtimes import RUNTIMES, runtimes_for


def test_built_agent_imports_only_stdlib_numpy_and_runtimes() -> None:
    tree = ast.parse(build_agent())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert mods <= set(sys.stdlib_module_names) | {"numpy"}, mods  # runtimes are imported by name at run time
    assert "edgeslim" not in mods and "torch" not in mods


def test_built_agent_runs_from_a_bare_interpreter(tmp_path: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_text(build_agent())
    out = subprocess.run([sys.executable, "-I", str(script), "probe", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out.startswith(agent.PREFIX) and '"event": "probe"' in out


def test_runtime_registries_agree() -> None:
    assert set(agent.RUNTIMES) == set(RUNTIMES.names())
    for name, cls in agent.RUNTIMES.items():
        spec = RUNTIMES.get(name)
        assert (cls.module, cls.pip_name, cls.suffixes) == (spec.module, spec.pip_name, spec.suffixes)
    assert [r.name for r in runtimes_for(".tflite")] == ["ai-edge-litert", "tflite-runtime"]


def test_local_onnx_outputs_and_top1(models: dict[str, Path], tmp_path: Path) -> None:
    report = bench(models["small"], "local", runs=20, threads=1, inputs=models["inputs"], return_outputs=True,
                   results_file=tmp_path / "r.jsonl")
    d = report.results[0].data
    assert len(d["latencies_ms"]) == 20 and d["top1"] == pytest.approx(0.75)
    assert d["load_ms"] > 0 and d["peak_rss_mb"] > 10 and d["runtime"] == "onnxruntime"
    assert d["runtime_settings"] == {"graph_optimization_level": "enable_all", "graph_optimization_source": "default",
                                     "intra_op_threads": 1, "allow_spinning": False}
    import onnxruntime as ort

    x = np.load(models["inputs"])["x"][:1]
    ref = ort.InferenceSession(str(models["small"]), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.asarray(d["outputs"][0]), ref, rtol=1e-6, atol=1e-6)
    assert report.summary()["p50"] == d["p50"]


def test_local_tflite_with_ai_edge_litert(tmp_path: Path) -> None:
    path, w, b = make_tflite(tmp_path / "fc.tflite")
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    d = bench(path, "local", runs=5, inputs=tmp_path / "x.npz", return_outputs=True).results[0].data
    assert d["runtime"] == "ai-edge-litert"
    ref = (torch.from_numpy(x[:1]) @ torch.from_numpy(w).T + torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(np.asarray(d["outputs"][0]), ref, atol=1e-5)


def test_bad_arguments_fail_before_connecting(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DeviceConfigError, match="runs must be >= 1"):
        bench(models["small"], runs=0)
    with pytest.raises(DeviceConfigError, match="is not a file"):
        bench(tmp_path / "missing.onnx")
    with pytest.raises(DeviceConfigError, match="bad SSH target"):
        bench(models["small"], "ssh://")
