"""int8 ViT and Swin convert to LiteRT: constant operands (position embedding, class token, relative position
bias, Swin V2's position-bias MLP) stay float, slices keep their input's scale. Before, litert-torch refused both ('stablehlo.uniform_dequantize'
on a bare int8 tensor; 'tfl.strided_slice' same-scale constraint)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2


def _vit() -> torch.nn.Module:
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=32, mlp_dim=64, num_classes=4)
    torch.nn.init.normal_(vit.heads.head.weight, std=0.5)  # torchvision starts the head at zero: outputs all 0
    return vit


def _swin() -> torch.nn.Module:
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
                           num_classes=4)


def _swin_v2() -> torch.nn.Module:
    # its continuous position bias is an MLP on a constant coordinate table: computed from buffers alone, it stays float
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
                           num_classes=4, block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2)


@pytest.mark.parametrize("build", [_vit, _swin, _swin_v2], ids=["vit", "swin", "swin_v2"])
def test_int8_transformer_converts_runs_and_matches_pytorch(build, int8_litert) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(1, 3, 32, 32)
    interp, q = int8_litert(model, x)
    kinds = {d["op_name"] for d in interp._get_ops_details()}
    assert {"FULLY_CONNECTED", "QUANTIZE", "DEQUANTIZE"} <= kinds, kinds
    fc = next(d for d in interp._get_ops_details() if d["op_name"] == "FULLY_CONNECTED")
    assert interp.get_tensor_details()[fc["inputs"][1]]["dtype"] == np.int8  # weights really int8
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    xs = torch.randn(1, 3, 32, 32)
    arr = xs.numpy() if list(inp["shape"]) == [1, 3, 32, 32] else xs.numpy().transpose(0, 2, 3, 1)
    interp.set_tensor(inp["index"], arr.astype(np.float32))
    interp.invoke()
    got = torch.from_numpy(interp.get_tensor(outp["index"]).copy()).flatten()
    ref = q.model(xs).detach().flatten()
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=0).item()
    assert cos > 0.98, cos
