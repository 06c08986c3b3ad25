"""Structural, parameter and hybrid pruning on torch-pruning's dependency graph."""

from edgeslim.plugin.pruning.api import PruneResult, prune
from edgeslim.plugin.pruning.config import Allocation, LayerRule, Method, PruneConfig, Target, TargetKind
from edgeslim.plugin.pruning.importance import IMPORTANCE
from edgeslim.plugin.pruning.sensitivity import SensitivityResult, sensitivity
from edgeslim.plugin.pruning.unstructured import Masks, compute_masks, group_lasso_penalty, l1_penalty

__all__ = [
    "IMPORTANCE",
    "Allocation",
    "LayerRule",
    "Masks",
    "Method",
    "PruneConfig",
    "PruneResult",
    "SensitivityResult",
    "Target",
    "TargetKind",
    "compute_masks",
    "group_lasso_penalty",
    "l1_penalty",
    "prune",
    "sensitivity",
]
