"""The tensorrt runner's bookkeeping (shapes, profiles, chunking, buffers) against a stand-in for TensorRT and CUDA.

Nothing here runs TensorRT: that is ``tests/exporters/test_tensorrt_gpu.py`` (marker ``gpu``). The stand-in
computes ``x.reshape(n, -1) @ W`` where the engine would run, through the same calls the runner makes.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeslim.device_bench.runtimes import tensorrt as trt_runtime
from edgeslim.device_bench.runtimes.tensorrt import TensorRtRunner

W = np.random.default_rng(0).standard_normal((3 * 4 * 4, 10)).astype(np.float32)


class Memory:
    """Device memory as a dict of numpy arrays keyed by fake addresses."""

    def __init__(self) -> None:
        self.arrays: dict[int, np.ndarray] = {}
        self.stream_handle = 7

    def to_device(self, arr: np.ndarray) -> tuple[int, Any]:
        ptr = 1000 + len(self.arrays)
        self.arrays[ptr] = np.array(arr)
        return ptr, ptr

    def empty(self, shape: tuple[int, ...], dtype: str) -> tuple[int, Any]:
        return self.to_device(np.full(shape, np.nan, dtype))

    def to_host(self, handle: int) -> np.ndarray:
        return self.arrays[handle]

    def sync(self) -> None: ...


def fake_tensorrt(batch: int, memory: Memory) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "0.test"  # type: ignore[attr-defined]
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")  # type: ignore[attr-defined]

    class Context:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addr: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
            assert len(shape) == 4 and (batch == -1 or shape[0] == batch) and shape[0] <= 8
            self.shapes[name] = shape

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (self.shapes["input"][0], 10)

        def set_tensor_address(self, name: str, ptr: int) -> None:
            self.addr[name] = ptr

        def execute_async_v3(self, stream: int) -> bool:
            assert stream == memory.stream_handle
            x = memory.arrays[self.addr["input"]]
            memory.arrays[self.addr["output"]][...] = x.reshape(len(x), -1) @ W
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i: int) -> str:
            return ["input", "output"][i]

        def get_tensor_mode(self, name: str) -> str:
            return "in" if name == "input" else "out"

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (batch, 3, 4, 4) if name == "input" else (batch, 10)

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
            return [(1, 3, 4, 4), (2, 3, 4, 4), (8, 3, 4, 4)]

        def get_tensor_dtype(self, name: str) -> str:
            return "DataType.FLOAT"

        def create_execution_context(self) -> Context:
            return Context()

    class Runtime:
        def __init__(self, logger: object) -> None: ...

        def deserialize_cuda_engine(self, blob: bytes) -> Engine | None:
            return Engine() if blob == b"engine" else None

    trt.Runtime = Runtime  # type: ignore[attr-defined]
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})  # type: ignore[attr-defined]
    return trt


@pytest.fixture()
def engine_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.engine"
    path.write_bytes(b"engine")
    return path


@pytest.mark.parametrize("batch", [-1, 4])
def test_predict_chunks_and_pads_like_the_other_runners(
    engine_file: Path, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = Memory()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(batch, memory))
    monkeypatch.setattr(trt_runtime, "_buffers", lambda: memory)
    runner = TensorRtRunner(engine_file)
    assert runner.inputs == ["input"] and runner.outputs == ["output"]
    assert (runner.batch, runner.max_batch) == ((None, 8) if batch == -1 else (4, 4))
    # a dynamic batch is shown (and timed by the agent) at the profile's opt shape
    assert runner.input_specs() == [("input", [2, 3, 4, 4] if batch == -1 else [4, 3, 4, 4], "float32")]
    x = np.random.default_rng(1).standard_normal((19, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(runner.predict(x), x.reshape(19, -1) @ W, rtol=1e-5, atol=1e-5)
    assert runner.settings == {"tensorrt": "0.test", "memory": "Memory"}
    assert runner.energy_sensors == ("nvml", "nvidia-smi")


def test_an_engine_from_another_gpu_or_version_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = Memory()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(-1, memory))
    monkeypatch.setattr(trt_runtime, "_buffers", lambda: memory)
    path = tmp_path / "other.engine"
    path.write_bytes(b"built elsewhere")
    with pytest.raises(RuntimeError, match=r"an engine runs only on the GPU model and TensorRT version it was built"):
        TensorRtRunner(path)


def test_no_cuda_memory_api_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    monkeypatch.setitem(sys.modules, "cuda", None)  # no cuda-python
    with pytest.raises(
        RuntimeError, match=r"no CUDA memory API: install torch with CUDA or cuda-python \(TorchBuffers"
    ):
        trt_runtime._buffers()
