"""Weight-magnitude criteria: group L1 and L2 norms (torch-pruning's GroupMagnitudeImportance)."""

from __future__ import annotations

import torch_pruning as tp

from edgeslim.plugin.pruning.importance.base import IMPORTANCE


@IMPORTANCE.register("l1")
class L1Importance(tp.importance.GroupMagnitudeImportance):
    """Sum of |w| over each channel's weights in every layer of the group (mean-normalised)."""

    def __init__(self) -> None:
        super().__init__(p=1, group_reduction="mean", normalizer="mean")


@IMPORTANCE.register("l2")
class L2Importance(tp.importance.GroupMagnitudeImportance):
    """Sum of w² over each channel's weights in every layer of the group (mean-normalised)."""

    def __init__(self) -> None:
        super().__init__(p=2, group_reduction="mean", normalizer="mean")
