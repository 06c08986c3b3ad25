"""A max pool between int8 tensors keeps one scale, so ONNX Runtime folds it into an int8 NHWC max pool."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from torch import nn

from edgeslim.exporters import export


class _Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(torch.relu(self.bn(self.conv1(x))))
        y = torch.relu(self.conv2(y) + y)
        return self.head(y.mean((2, 3)))


def _scales_around_maxpool(path: Path) -> tuple[float, float]:
    g = onnx.load(str(path)).graph
    values = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    values.update(
        {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in g.node if n.op_type == "Constant"}
    )
    producer = {o: n for n in g.node for o in n.output}
    pool = next(n for n in g.node if n.op_type == "MaxPool")
    before = producer[pool.input[0]]
    after = next(n for n in g.node if pool.output[0] in n.input)
    assert (before.op_type, after.op_type) == ("DequantizeLinear", "QuantizeLinear")
    return float(values[before.input[1]]), float(values[after.input[1]])


def test_int8_maxpool_has_one_scale_and_runs_in_int8(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Stem().eval()
    # 64x64 inputs: more activation values than the MSE calibrator's sub-sample, where the scales used to differ
    calib = [(torch.rand(16, 3, 64, 64), torch.zeros(16, dtype=torch.long)) for _ in range(4)]
    out = tmp_path / "q.onnx"
    export(model, "onnx", out, torch.rand(1, 3, 64, 64), quant="int8", calibration=calib, verify=False)
    before, after = _scales_around_maxpool(out)
    assert before == after
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    assert "NhwcMaxPool" in ops and "MaxPool" not in ops, ops
