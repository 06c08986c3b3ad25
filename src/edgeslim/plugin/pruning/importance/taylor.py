"""First-order Taylor importance: |w · ∂L/∂w| summed over each channel (Molchanov et al., 2019)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch_pruning as tp
from torch import nn

from edgeslim.errors import PruningError
from edgeslim.plugin.pruning.importance.base import IMPORTANCE, Batch, LossFn


@IMPORTANCE.register("taylor")
class TaylorImportance(tp.importance.GroupTaylorImportance):
    """Group Taylor importance from gradients accumulated over a few batches with a loss."""

    def __init__(self) -> None:
        super().__init__(group_reduction="mean", normalizer="mean")
        self.grads: dict[str, torch.Tensor] = {}

    def collect(self, model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn) -> None:
        """Accumulate (mean) gradients of ``loss_fn`` over ``batches``; the model's own grads are untouched."""
        saved = {n: p.grad for n, p in model.named_parameters()}
        was_training = model.training
        model.eval()  # BN statistics must not move
        sums: dict[str, torch.Tensor] = {}
        n = 0
        try:
            for x, y in batches:
                model.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                for name, p in model.named_parameters():
                    if p.grad is not None:
                        sums[name] = sums.get(name, torch.zeros_like(p)) + p.grad.detach()
                n += 1
        finally:
            for name, p in model.named_parameters():
                p.grad = saved[name]
            model.train(was_training)
        if n == 0:
            raise PruningError("taylor importance needs at least one batch of data; pass data=<a DataLoader>")
        self.grads = {k: v / n for k, v in sums.items()}

    def bind(self, model: nn.Module) -> None:
        """Set ``.grad`` of ``model``'s parameters to the collected gradients (by name)."""
        if not self.grads:
            raise PruningError("taylor importance used before collect(); pass data=<a DataLoader> to prune()")
        for name, p in model.named_parameters():
            g = self.grads.get(name)
            p.grad = None if g is None or g.shape != p.shape else g.clone()
