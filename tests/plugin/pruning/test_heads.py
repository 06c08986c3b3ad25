"""heads.py: which attentions can lose whole heads."""

from __future__ import annotations

import torch
from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

import edgeslim
from edgeslim.plugin.pruning import PruneConfig


def test_an_attention_whose_head_removal_fails_while_slicing_keeps_its_heads() -> None:
    # timm MViTv2: the pooled attention's layout is read so that slicing its consumer fails (an index past its
    # width); that attention is not removable (heads kept) instead of the raw RuntimeError stopping the prune
    torch.manual_seed(0)
    model = MultiScaleVit(MultiScaleVitCfg(depths=(1, 1, 1, 1)), img_size=(224, 224), num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224)
    res = edgeslim.prune(model, x, PruneConfig(criterion="l2", target="params=0.5"))
    assert res.summary()["target_met"] is True
    with torch.no_grad():
        assert res.model(x).shape == (1, 10)
