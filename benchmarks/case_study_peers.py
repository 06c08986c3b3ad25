"""The peers of the case study, each as a plain user of that library would call it.

- torch-pruning alone: ``tp.pruner.BasePruner`` + group L2 magnitude, iterative (5 steps),
  classifier ignored, one uniform ratio bisected to a parameter count; fine-tuned either with
  a plain user's loop (SGD, constant LR, cross-entropy) or with edgeslim's recipe.
- ONNX Runtime ``quantize_static`` on the fp32 ONNX file, default arguments, the same
  calibration images as edgeslim.
- NNCF ``nncf.quantize`` (ONNX backend) on the same fp32 ONNX file and calibration images.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def torch_pruning_uniform(model: nn.Module, x: torch.Tensor, params_goal: int, steps: int = 5) -> tuple[nn.Module, float]:
    """torch-pruning alone at (just under) ``params_goal`` parameters: the uniform ratio is bisected.

    Returns the pruned copy and the channel ratio used.
    """

    def pruned_at(ratio: float) -> nn.Module:
        m = copy.deepcopy(model).eval()
        head = [mod for mod in m.modules() if isinstance(mod, nn.Linear)][-1:]
        pruner = tp.pruner.BasePruner(
            m, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
            iterative_steps=steps, ignored_layers=head,
        )
        for _ in range(steps):
            pruner.step()
        return m

    lo, hi = 0.0, 0.9
    best = None
    for _ in range(14):
        mid = (lo + hi) / 2
        m = pruned_at(mid)
        if _params(m) <= params_goal:
            best, hi = (m, mid), mid
        else:
            lo = mid
    if best is None:
        raise RuntimeError(f"torch-pruning could not reach {params_goal} params")
    return best


def _arrays(calibration: Iterable[Any]) -> list[np.ndarray]:
    out = []
    for batch in calibration:
        xb = batch[0] if isinstance(batch, (tuple, list)) else batch
        out.extend(np.asarray(xb[i : i + 1], dtype=np.float32) for i in range(len(xb)))
    return out


def ort_quantize_static(fp32_onnx: Path, out: Path, calibration: Iterable[Any]) -> dict[str, Any]:
    """``onnxruntime.quantization.quantize_static`` with its default arguments (QDQ, S8S8, per-tensor)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    name = onnx.load(str(fp32_onnx), load_external_data=False).graph.input[0].name
    arrays = _arrays(calibration)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(arrays)

        def get_next(self) -> dict[str, np.ndarray] | None:
            arr = next(self.it, None)
            return None if arr is None else {name: arr}

    t0 = time.perf_counter()
    quantize_static(str(fp32_onnx), str(out), Reader())
    return {"seconds": time.perf_counter() - t0, "calibration_images": len(arrays),
            "call": "quantize_static(fp32.onnx, out.onnx, reader)  # defaults: QDQ, QInt8 activations + weights, per-tensor"}


def nncf_quantize(fp32_onnx: Path, out: Path, calibration: Iterable[Any]) -> dict[str, Any]:
    """``nncf.quantize`` (ONNX backend, default preset) on the fp32 ONNX file."""
    import nncf
    import onnx

    model = onnx.load(str(fp32_onnx))
    name = model.graph.input[0].name
    arrays = _arrays(calibration)
    t0 = time.perf_counter()
    q = nncf.quantize(model, nncf.Dataset(arrays, lambda a: {name: a}), subset_size=len(arrays))
    onnx.save(q, str(out))
    return {"seconds": time.perf_counter() - t0, "calibration_images": len(arrays), "nncf": nncf.__version__,
            "call": "nncf.quantize(onnx_model, nncf.Dataset(images), subset_size=N)  # default preset"}
