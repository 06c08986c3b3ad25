"""api.py: the embedding width is narrowed automatically only when a size target needs it."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import VisionTransformer

import edgeslim
from edgeslim.plugin.pruning import PruneConfig
from edgeslim.plugin.pruning.config import TransformerConfig
from edgeslim.plugin.pruning.targets import NearestPlanError


def _one_head_vit() -> VisionTransformer:
    # one head per attention (none can go) and a narrow MLP: with the embedding width whole, half the params are
    # out of reach
    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=1, hidden_dim=64, mlp_dim=32,
                             num_classes=10).eval()


def test_an_out_of_reach_target_narrows_the_embedding_width_and_says_so() -> None:
    model, x = _one_head_vit(), torch.randn(1, 3, 32, 32)
    res = edgeslim.prune(model, x, PruneConfig(criterion="l2", target="params=0.5"))
    summary = res.summary()
    assert summary["target_met"] is True
    assert abs(summary["params_fraction"] - 0.5) <= 0.01
    assert summary["embed_dim"]["narrowed"] is True
    assert summary["embed_dim"]["nearest_whole"] > 0.6  # what the embedding kept whole could reach
    assert summary["config"]["transformer"]["embed_dim"] is True  # the config that made the model
    assert res.model.hidden_dim < 64 and res.model.conv_proj.out_channels == res.model.hidden_dim
    with torch.no_grad():
        assert res.model(x).shape == (1, 10)
    assert model.hidden_dim == 64  # the input model is untouched


def test_embed_dim_false_keeps_it_whole_and_names_the_nearest() -> None:
    cfg = PruneConfig(criterion="l2", target="params=0.5", transformer=TransformerConfig(embed_dim=False))
    with pytest.raises(NearestPlanError, match=r"params=0.5 cannot be reached .* keeps 0\.[6-9]"):
        edgeslim.prune(_one_head_vit(), torch.randn(1, 3, 32, 32), cfg)


def test_a_reachable_target_keeps_the_embedding_width_whole() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=256,
                              num_classes=10).eval()
    res = edgeslim.prune(model, torch.randn(1, 3, 32, 32), PruneConfig(criterion="l2", target="params=0.5"))
    assert res.summary()["target_met"] is True
    assert "embed_dim" not in res.summary()
    assert res.model.hidden_dim == 64
