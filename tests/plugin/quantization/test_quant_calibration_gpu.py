"""PTQ calibration on a CUDA GPU (marker ``gpu``; never in CI): the same accuracy as on the CPU, the result on the CPU."""

from __future__ import annotations

import pytest
import torch

from edgeslim.data import evaluate
from edgeslim.plugin.quantization import QuantConfig, calibrate, quantize
from edgeslim.plugin.quantization.api import prepare

pytestmark = pytest.mark.gpu

X = torch.zeros(2, 3, 32, 32)


def test_ptq_calibrated_on_cuda_matches_the_cpu(resnet18_fmnist: torch.nn.Module, calib_256: torch.utils.data.DataLoader,
                                                 test_loader_1k: torch.utils.data.DataLoader) -> None:
    cpu = quantize(resnet18_fmnist, X, "int8", calibration=calib_256, device="cpu")
    gpu = quantize(resnet18_fmnist, X, "int8", calibration=calib_256, device="cuda")
    assert {t.device.type for t in gpu.model.state_dict().values()} == {"cpu"}  # ready to export
    assert {p.device.type for p in resnet18_fmnist.parameters()} == {"cpu"}  # the user's model stays put
    top1_cpu, top1_gpu = evaluate(cpu.model, test_loader_1k), evaluate(gpu.model, test_loader_1k)
    assert abs(top1_gpu - top1_cpu) <= 0.003, (top1_cpu, top1_gpu)  # 3 of 1,000 images: GPU float sums differ
    for a, b in zip(cpu.report.layers, gpu.report.layers, strict=True):
        assert a.name == b.name and b.sqnr_db == pytest.approx(a.sqnr_db, abs=0.5)


class _Pos(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.arange(x.shape[-1], dtype=x.dtype)


def test_a_graph_pinned_to_the_cpu_calibrates_there_with_a_warning() -> None:
    prepared = prepare(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), _Pos()), torch.randn(2, 3, 8, 8),
                       QuantConfig.from_spec("int8"))
    with pytest.warns(UserWarning, match=r"creates tensors on a fixed device \(node arange\); calibrating on cpu, not cuda"):
        assert calibrate(prepared, [torch.randn(4, 3, 8, 8)], device="cuda") == 4
