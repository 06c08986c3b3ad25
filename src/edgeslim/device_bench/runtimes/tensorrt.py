"""TensorRT engines (``.engine`` / ``.plan``) on an NVIDIA GPU: THE runner of engines, on the host and on a board.

This file depends on the standard library and numpy only at import time; ``tensorrt`` and the
CUDA memory API are imported by name when a runner is made, so the bench agent can carry it
(:func:`edgeslim.device_bench.agent_build.build_agent`) and the exporter's verification
(:class:`edgeslim.exporters.tensorrt.TensorRtVerifyRunner`) subclasses it. Device buffers come from
``torch`` when it is importable with CUDA (the host), else from ``cuda-python``
(``cuda.bindings.runtime`` or the older ``cuda.cudart``; a Jetson board). An engine is built
for one GPU model and one TensorRT version: build it on the machine that runs it.

Inputs with a dynamic batch are run at the optimisation profile's "opt" shape unless a batch
is given; :meth:`predict` splits a larger batch into chunks of at most the profile's maximum.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

try:
    import numpy as np
except ImportError:  # on a board without numpy the agent reports it (its probe still runs)
    np = None  # type: ignore[assignment]


def _trt_dtype(trt: Any, dtype: Any) -> str:
    """numpy dtype name of a TensorRT ``DataType``."""
    names = {
        "FLOAT": "float32",
        "HALF": "float16",
        "INT8": "int8",
        "INT32": "int32",
        "INT64": "int64",
        "BOOL": "bool",
        "UINT8": "uint8",
        "BF16": "float32",
    }
    return names.get(str(dtype).rsplit(".", 1)[-1], "float32")


class _TorchBuffers:
    """Device memory through torch (host side)."""

    def __init__(self) -> None:
        self.torch = importlib.import_module("torch")
        if not self.torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA GPU")
        self.stream = self.torch.cuda.current_stream()  # the copies run on it too: no cross-stream race

    def to_device(self, arr: Any) -> tuple[int, Any]:
        t = self.torch.from_numpy(np.ascontiguousarray(arr)).cuda()
        return t.data_ptr(), t

    def empty(self, shape: tuple[int, ...], dtype: str) -> tuple[int, Any]:
        t = self.torch.empty(shape, dtype=getattr(self.torch, dtype), device="cuda")
        return t.data_ptr(), t

    def to_host(self, handle: Any) -> Any:
        return handle.cpu().numpy()

    def sync(self) -> None:
        self.stream.synchronize()

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)


class _CudaPythonBuffers:
    """Device memory through cuda-python's runtime API (a board without torch)."""

    def __init__(self) -> None:
        try:
            self.rt = importlib.import_module("cuda.bindings.runtime")
        except ImportError:
            self.rt = importlib.import_module("cuda.cudart")
        err, self.stream = self.rt.cudaStreamCreate()
        self._check(err, "cudaStreamCreate")

    def _check(self, err: Any, what: str) -> None:
        if int(err) != 0:
            raise RuntimeError(f"{what} failed: CUDA error {err}")

    def _alloc(self, nbytes: int) -> int:
        err, ptr = self.rt.cudaMalloc(max(nbytes, 1))
        self._check(err, "cudaMalloc")
        return int(ptr)

    def to_device(self, arr: Any) -> tuple[int, Any]:
        arr = np.ascontiguousarray(arr)
        ptr = self._alloc(arr.nbytes)
        (err,) = self.rt.cudaMemcpy(ptr, arr.ctypes.data, arr.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice)
        self._check(err, "cudaMemcpy")
        return ptr, (ptr, arr.shape, arr.dtype)

    def empty(self, shape: tuple[int, ...], dtype: str) -> tuple[int, Any]:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = self._alloc(nbytes)
        return ptr, (ptr, shape, np.dtype(dtype))

    def to_host(self, handle: Any) -> Any:
        ptr, shape, dtype = handle
        out = np.empty(shape, dtype)
        (err,) = self.rt.cudaMemcpy(out.ctypes.data, ptr, out.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        self._check(err, "cudaMemcpy")
        (err,) = self.rt.cudaFree(ptr)
        return out

    def sync(self) -> None:
        (err,) = self.rt.cudaStreamSynchronize(self.stream)
        self._check(err, "cudaStreamSynchronize")

    @property
    def stream_handle(self) -> int:
        return int(self.stream)


def _buffers() -> Any:
    """torch's CUDA memory if torch has a GPU, else cuda-python's."""
    errors = []
    for cls in (_TorchBuffers, _CudaPythonBuffers):
        try:
            return cls()
        except Exception as exc:  # tried in order; all failures are reported together
            errors.append(f"{cls.__name__.strip('_')}: {type(exc).__name__}: {exc}")
    raise RuntimeError("no CUDA memory API: install torch with CUDA or cuda-python (" + "; ".join(errors) + ")")


class TensorRtRunner:
    """A serialized TensorRT engine in a TensorRT execution context on the first CUDA GPU.

    Args:
        path: The ``.engine`` / ``.plan`` file.
        threads: Ignored (a GPU runtime); accepted for the common runner interface.

    Attributes:
        engine: The deserialized ``ICudaEngine``. context: Its execution context.
        batch: The fixed batch size, or None for a dynamic batch.
        max_batch: The largest batch the engine's profile accepts.
        metadata: Empty (engines carry no edgeslim metadata). settings: What is recorded in results.
    """

    name = "tensorrt"
    module = "tensorrt"
    pip_name = "tensorrt"
    suffixes = (".engine", ".plan")
    wheels = ("numpy", "tensorrt", "cuda-python")
    #: Energy sensors to try first when this runtime is benched with ``--energy``.
    energy_sensors = ("nvml", "nvidia-smi")

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        trt = importlib.import_module(self.module)
        self.trt = trt
        self.mem = _buffers()
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        with open(path, "rb") as f:
            self.engine = self.runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise RuntimeError(
                f"TensorRT {trt.__version__} could not load {os.fspath(path)} (an engine runs only on "
                "the GPU model and TensorRT version it was built with: rebuild it here)"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        shape = [int(d) for d in self.engine.get_tensor_shape(self.inputs[0])]
        if shape and shape[0] == -1:
            _, opt, top = self.engine.get_tensor_profile_shape(self.inputs[0], 0)
            self.batch, self.max_batch, self.opt_shape = None, int(top[0]), [int(d) for d in opt]
        else:
            self.batch, self.max_batch, self.opt_shape = (shape[0] if shape else 1), (shape[0] if shape else 1), shape
        self.metadata: dict[str, str] = {}
        self.settings: dict[str, Any] = {"tensorrt": trt.__version__, "memory": type(self.mem).__name__.strip("_")}

    def input_specs(self) -> list[tuple[str, list[int], str]]:
        """``(name, shape, dtype)`` per input; a dynamic batch is shown at the profile's opt shape."""
        out = []
        for n in self.inputs:
            shape = [int(d) for d in self.engine.get_tensor_shape(n)]
            if -1 in shape:
                shape = [int(d) for d in self.engine.get_tensor_profile_shape(n, 0)[1]]
            out.append((n, shape, _trt_dtype(self.trt, self.engine.get_tensor_dtype(n))))
        return out

    def run(self, feeds: Mapping[str, Any]) -> list[Any]:
        """Run once: copy the inputs to the GPU, execute, copy the outputs back."""
        keep = []
        for n in self.inputs:
            arr = np.asarray(feeds[n]).astype(_trt_dtype(self.trt, self.engine.get_tensor_dtype(n)), copy=False)
            self.context.set_input_shape(n, tuple(arr.shape))
            ptr, handle = self.mem.to_device(arr)
            self.context.set_tensor_address(n, ptr)
            keep.append(handle)
        outs = []
        for n in self.outputs:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(n))
            ptr, handle = self.mem.empty(shape, _trt_dtype(self.trt, self.engine.get_tensor_dtype(n)))
            self.context.set_tensor_address(n, ptr)
            outs.append(handle)
        if not self.context.execute_async_v3(self.mem.stream_handle):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.mem.sync()
        for handle in keep:
            if isinstance(handle, tuple):  # cuda-python: free the input buffers
                self.mem.rt.cudaFree(handle[0])
        return [self.mem.to_host(h) for h in outs]

    def adapt(self, x: Any) -> Any:
        """A batch for the first input: float32, C-contiguous (engines take NCHW like the ONNX file)."""
        return np.ascontiguousarray(np.asarray(x, np.float32))

    def predict(self, x: Any) -> Any:
        """The first output (float32) for a batch ``x`` of any size."""
        xin = self.adapt(x)
        step = self.batch or self.max_batch
        outs = []
        for i in range(0, len(xin), step):
            chunk = xin[i : i + step]
            pad = (self.batch - len(chunk)) if self.batch else 0
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            outs.append(np.asarray(self.run({self.inputs[0]: chunk})[0])[: len(chunk) - pad])
        return np.concatenate(outs).astype(np.float32)
