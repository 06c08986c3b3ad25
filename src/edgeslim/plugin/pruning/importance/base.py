"""The importance-criterion registry and the protocol data-driven criteria follow.

An importance criterion is a torch-pruning ``Importance``: ``imp(group) -> Tensor`` of one
score per channel of the group (higher = keep). Criteria that need data (Taylor,
activation) gather their statistics first, in a separate phase::

    imp = IMPORTANCE.get("taylor")()
    imp.collect(model, batches, loss_fn)   # statistics phase, on the original model
    imp.bind(model_copy)                    # before pruning a (possibly deep-copied) model

Register a new criterion in one new file::

    @IMPORTANCE.register("my_crit")
    class MyImportance(tp.importance.Importance): ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

import torch
import torch_pruning as tp
from torch import nn

from edgeslim.registry import Registry

#: name -> a zero-argument factory (usually the class) returning a torch-pruning Importance.
IMPORTANCE: Registry[Callable[[], tp.importance.Importance]] = Registry("importance criterion")

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@runtime_checkable
class DataDriven(Protocol):
    """A criterion whose scores come from data (statistics phase, then scoring)."""

    def collect(self, model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn) -> None:
        """Gather statistics on ``model`` from ``batches``."""
        ...

    def bind(self, model: nn.Module) -> None:
        """Attach the gathered statistics to ``model`` (the model about to be pruned)."""
        ...


def needs_data(imp: Any) -> bool:
    """Whether ``imp`` needs :meth:`DataDriven.collect` before use."""
    return isinstance(imp, DataDriven)


def make(name: str) -> tp.importance.Importance:
    """Instantiate the criterion registered as ``name``."""
    return IMPORTANCE.get(name)()
