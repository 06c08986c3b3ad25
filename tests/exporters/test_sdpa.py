"""sdpa.py: attention on 5-D tensors (timm NesT's layout) exports to ONNX with the attention written out."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import edgeslim
from edgeslim.exporters import export
from edgeslim.exporters.sdpa import decompose_sdpa


class BlockAttention(nn.Module):
    """Attention within 4 blocks of 16 tokens each: q, k, v are (batch, heads, blocks, tokens, head_dim)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.qkv, self.proj, self.head = nn.Linear(16, 48), nn.Linear(16, 16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.stem(x).flatten(2).transpose(1, 2)  # (B, 64, 16)
        b = t.shape[0]
        qkv = self.qkv(t).reshape(b, 4, 16, 3, 2, 8).permute(3, 0, 4, 1, 2, 5)  # (3, B, heads, blocks, tokens, 8)
        q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(q, k, v).permute(0, 2, 3, 4, 1).reshape(b, 64, 16)
        return self.head((t + self.proj(y)).mean(1))


def test_written_out_attention_computes_the_same() -> None:
    torch.manual_seed(0)
    model, x = BlockAttention().eval(), torch.randn(2, 3, 32, 32)
    program = torch.export.export(model, (x,))
    assert decompose_sdpa(program.graph_module) == 1
    targets = {n.target for n in program.graph_module.graph.nodes}
    assert torch.ops.aten.scaled_dot_product_attention.default not in targets
    torch.testing.assert_close(program.module()(x), model(x), atol=1e-5, rtol=1e-5)


def test_fp32_and_int8_onnx_of_5d_attention_verify_in_onnxruntime(real_images: torch.Tensor, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, example = BlockAttention().eval(), torch.randn(1, 3, 32, 32)
    fp32 = export(model, "onnx", tmp_path / "m.onnx", example, verify_inputs=real_images[:32])
    assert fp32.verification is not None and fp32.verification.passed
    assert fp32.verification.max_abs_error < 1e-4
    q = edgeslim.quantize(model, example, "int8", calibration=[real_images[32:64]])
    int8 = export(q, "onnx", tmp_path / "q.onnx", example, verify_inputs=real_images[:32])
    assert int8.verification is not None and int8.verification.passed
