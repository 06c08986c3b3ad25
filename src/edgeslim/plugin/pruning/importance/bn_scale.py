"""Network slimming: a channel's importance is |γ| of its BatchNorm (Liu et al., 2017)."""

from __future__ import annotations

import torch_pruning as tp

from edgeslim.plugin.pruning.importance.base import IMPORTANCE


@IMPORTANCE.register("bn_scale")
class BNScaleImportance(tp.importance.BNScaleImportance):
    """|γ| of the BatchNorm layers in the group; groups without BN fall back to nothing (kept)."""

    def __init__(self) -> None:
        super().__init__(group_reduction="mean", normalizer="mean")
