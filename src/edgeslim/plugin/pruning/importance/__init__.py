"""Importance criteria, one per file, registered by name in :data:`IMPORTANCE`."""

from edgeslim.plugin.pruning.importance import activation, bn_scale, magnitude, random, taylor
from edgeslim.plugin.pruning.importance.base import IMPORTANCE, DataDriven, make, needs_data

__all__ = ["IMPORTANCE", "DataDriven", "activation", "bn_scale", "magnitude", "make", "needs_data", "random", "taylor"]
