"""Random importance: the baseline every criterion must beat."""

from __future__ import annotations

import torch_pruning as tp

from edgeslim.plugin.pruning.importance.base import IMPORTANCE


@IMPORTANCE.register("random")
class RandomImportance(tp.importance.RandomImportance):
    """Uniform random scores (seed with ``torch.manual_seed`` for repeatability)."""
