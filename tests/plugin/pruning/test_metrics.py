"""Model size and cost numbers: what ``measure`` counts and how it is written."""

from __future__ import annotations

import json

import torch
from torch import nn

from edgeslim.plugin.pruning.metrics import ModelStats, measure


def test_stats_count_a_small_model_and_write_plain_ints() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
    with torch.no_grad():
        net[0].weight[0].zero_()
    stats = measure(net, torch.randn(1, 3, 8, 8))
    params = 4 * 3 * 9 + 256 * 2 + 2
    macs = 4 * 3 * 9 * 64 + 256 * 2 + 2  # torch-pruning counts the linear bias adds too
    assert stats == ModelStats(params, macs, 4 * params, params - 27)
    assert json.loads(json.dumps(stats.to_dict())) == {"params": params, "macs": macs,
                                                      "bytes": 4 * params, "nonzero_params": params - 27}
