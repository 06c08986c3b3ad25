"""count_ops: torch-pruning's MAC count without copying the model, leaving it as it was."""

from __future__ import annotations

import torch
import torch_pruning as tp
import torchvision

from edgeslim.plugin.pruning.metrics import count_ops


def test_count_ops_matches_torch_pruning_and_leaves_model_unchanged() -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    macs, params, layers = tp.utils.count_ops_and_params(model, x, layer_wise=True)[:3]
    attrs = set(vars(model))
    hooks = [len(m._forward_hooks) for m in model.modules()]
    ours = count_ops(model, x)
    assert (ours[0], ours[1]) == (macs, params)
    assert ours[2] == layers
    assert set(vars(model)) == attrs
    assert [len(m._forward_hooks) for m in model.modules()] == hooks
    assert not any(hasattr(m, "__flops__") or hasattr(m, "__params__") for m in model.modules())
