"""An average pool between int8 tensors keeps one scale: LiteRT's AVERAGE_POOL_2D requires it (DenseNet's transitions)."""

from __future__ import annotations

import numpy as np
import torch
import torchvision


def test_int8_densenet_average_pool_converts_to_litert_with_one_scale(int8_litert) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2,
                                        num_classes=4).eval()
    x = torch.randn(1, 3, 32, 32)
    # before: "'tfl.average_pool_2d' op quantization parameters violate the same scale constraint"
    interp, _ = int8_litert(model, x)
    ops = interp._get_ops_details()
    pool = next(d for d in ops if d["op_name"] == "AVERAGE_POOL_2D")
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    t_in, t_out = tensors[pool["inputs"][0]], tensors[pool["outputs"][0]]
    assert t_in["dtype"] == np.int8 and t_out["dtype"] == np.int8
    assert t_in["quantization"] == t_out["quantization"]
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], x.numpy().transpose(0, 2, 3, 1) if list(inp["shape"])[-1] == 3 else x.numpy())
    interp.invoke()
    assert np.isfinite(interp.get_tensor(interp.get_output_details()[0]["index"])).all()
