"""The uploadable agent is built from agent.py + the shared runner modules, and runs without edgeslim or torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from tiny_models import make_onnx, make_tflite

from edgeslim.device_bench import agent_build
from edgeslim.device_bench.agent_build import AgentBuildError, agent_file, build_agent
from edgeslim.device_bench.runtimes.litert import LiteRtRunner
from edgeslim.device_bench.runtimes.onnxruntime import GRAPH_OPTIMIZATION_KEY, OnnxRuntimeRunner

#: Runs a script as __main__ with torch and edgeslim made unimportable; reports what got imported.
_GUARD = """
import atexit, json, runpy, sys
for name in ("torch", "edgeslim"):
    sys.modules[name] = None  # `import torch` / `import edgeslim` now raise ImportError
atexit.register(lambda: print("GUARD " + json.dumps(sorted(
    m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in ("torch", "edgeslim")))))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_isolated(script: Path, *args: str, cwd: Path) -> list[dict]:
    """Run ``script`` with ``python -I`` from ``cwd`` under the guard; return its events."""
    proc = subprocess.run([sys.executable, "-I", "-c", _GUARD, str(script), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    guard = [line for line in proc.stdout.splitlines() if line.startswith("GUARD ")]
    assert guard == ["GUARD []"], proc.stdout
    return [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("@@edgeslim ")]


def test_build_is_deterministic_and_pastes_the_runner_sources() -> None:
    text = build_agent()
    assert text == build_agent() and agent_file().read_text() == text
    for module in ("onnxruntime", "litert"):
        source = (Path(agent_build.__file__).parent / "runtimes" / f"{module}.py").read_text()
        body = source.replace("from __future__ import annotations\n", "").strip("\n")
        assert body in text
    assert not re.search(r"^(from|import) edgeslim", text, re.MULTILINE)
    assert text.count("from __future__ import annotations") == 1


def test_build_refuses_a_module_that_imports_more_than_numpy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "heavy_runner.py").write_text("import torch\n\n\nclass Runner:\n    pass\n")
    (tmp_path / "agent.py").write_text("from heavy_runner import Runner  # edgeslim:inline\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(agent_build, "AGENT_SOURCE", tmp_path / "agent.py")
    with pytest.raises(AgentBuildError, match=r"imports \['torch'\]"):
        build_agent()


def test_build_refuses_clashing_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "one_runner.py").write_text("def helper():\n    return 1\n\n\nclass Runner:\n    pass\n")
    (tmp_path / "agent.py").write_text("from one_runner import Runner  # edgeslim:inline\n\n\ndef helper():\n    return 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(agent_build, "AGENT_SOURCE", tmp_path / "agent.py")
    with pytest.raises(AgentBuildError, match="redefines \\['helper'\\]"):
        build_agent()


def test_built_agent_benches_onnx_standalone_with_the_model_settings(tmp_path: Path) -> None:
    model, _ = make_onnx(tmp_path / "m.onnx")
    proto = onnx.load(str(model))
    proto.metadata_props.add(key=GRAPH_OPTIMIZATION_KEY, value="disable_all")
    proto.metadata_props.add(key="edgeslim.version", value="test")
    onnx.save(proto, str(model))
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    host = OnnxRuntimeRunner(model, threads=1)
    y = host.predict(x).argmax(1)
    np.savez(tmp_path / "eval.npz", x=x, y=y)
    script = tmp_path / "agent.py"
    script.write_text(build_agent())
    events = run_isolated(script, "bench", "--model", str(model), "--runs", "3", "--warmup", "1", "--threads", "1",
                          "--inputs", str(tmp_path / "eval.npz"), "--return-outputs", cwd=tmp_path)
    result = events[-1]
    assert result["event"] == "result" and result["runtime"] == "onnxruntime"
    assert result["runtime_settings"]["graph_optimization_level"] == "disable_all"
    assert result["runtime_settings"]["graph_optimization_source"] == "model metadata"
    assert result["artifact_metadata"] == {GRAPH_OPTIMIZATION_KEY: "disable_all", "edgeslim.version": "test"}
    assert result["top1"] == 1.0 and result["top1_n"] == 5
    np.testing.assert_array_equal(np.asarray(result["outputs"][0], np.float32), host.predict(x[:1]))


def test_built_agent_benches_tflite_standalone(tmp_path: Path) -> None:
    model, w, b = make_tflite(tmp_path / "fc.tflite")
    x = np.random.default_rng(1).standard_normal((7, 8)).astype(np.float32)
    host = LiteRtRunner(model)
    out = host.predict(x)
    np.testing.assert_allclose(out, x @ w.T + b, atol=1e-5)  # batch 1 model, 7 rows: chunked
    y = out.argmax(1)
    y[0] = (y[0] + 1) % 4
    np.savez(tmp_path / "eval.npz", x=x, y=y)
    script = tmp_path / "agent.py"
    script.write_text(build_agent())
    events = run_isolated(script, "bench", "--model", str(model), "--runs", "2", "--warmup", "0",
                          "--inputs", str(tmp_path / "eval.npz"), "--return-outputs", cwd=tmp_path)
    result = events[-1]
    assert result["event"] == "result" and result["runtime"] == "ai-edge-litert"
    assert result["top1"] == pytest.approx(6 / 7) and result["top1_n"] == 7 and result["top1_batch"] == 1
    assert result["runtime_settings"] == {"threads": 0, "xnnpack": True, "layout": "nchw"}
    np.testing.assert_array_equal(np.asarray(result["outputs"][0], np.float32), out[:1])


def test_the_agent_takes_its_runners_from_the_one_runtime_list() -> None:
    from edgeslim.device_bench.runtimes import RUNNERS, RUNTIMES

    source = agent_build.AGENT_SOURCE.read_text(encoding="utf-8")
    assert not any(cls.__name__ in source for cls in RUNNERS)  # agent.py names no runner: the build adds them
    built = build_agent()
    assert f"RUNNERS = ({', '.join(cls.__name__ for cls in RUNNERS)},)" in built
    for cls in RUNNERS:
        assert f"class {cls.__name__}" in built
    assert [c.name for c in RUNNERS] == [RUNTIMES.get(c.name).name for c in RUNNERS]
