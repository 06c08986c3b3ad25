"""graph.py: torch-pruning's index mappings as edgeslim patches them."""

from __future__ import annotations

import timm
import torch

import edgeslim
from edgeslim.plugin.pruning import PruneConfig


def test_a_reshape_whose_input_side_is_inferred_as_zero_channels_does_not_stop_tracing() -> None:
    # SHViT: torch-pruning infers 0 channels on one side of a reshape (fed from the model's input) and divided by
    # it (ZeroDivisionError while building the graph, "cannot trace"); such a reshape now gets no index mapping
    torch.manual_seed(0)
    model = timm.create_model("shvit_s1", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    res = edgeslim.prune(model, x, PruneConfig(criterion="l2", target="params=0.5"))
    summary = res.summary()
    assert abs(summary["params_fraction"] - 0.5) <= 0.5 * 0.02 + 1e-9
    assert summary["target_met"] is True
    with torch.no_grad():
        assert res.model(x).shape == (1, 10)
    assert sum(p.numel() for p in model.parameters()) == summary["params_before"]  # the input model is untouched
