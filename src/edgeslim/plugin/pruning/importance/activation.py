"""Activation-based importance: mean post-ReLU activation, and APoZ (Hu et al., 2016).

Statistics are gathered with forward hooks on every conv/linear/batch-norm output (after a
ReLU), keyed by module name so they survive a deep copy of the model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch_pruning as tp
from torch import nn

from edgeslim.errors import PruningError
from edgeslim.plugin.pruning.importance.base import IMPORTANCE, Batch, LossFn

_OUT_FNS = (
    tp.pruner.function.prune_conv_out_channels,
    tp.pruner.function.prune_linear_out_channels,
    tp.pruner.function.prune_batchnorm_out_channels,
)
_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)


class _ActivationStats(tp.importance.Importance):
    """Scores channels from per-module output statistics; subclasses pick the statistic."""

    def __init__(self) -> None:
        self.stats: dict[str, torch.Tensor] = {}
        self._names: dict[nn.Module, str] = {}

    @staticmethod
    def _statistic(out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def collect(self, model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn) -> None:
        """Average the statistic of every conv/linear/BN output over ``batches``."""
        del loss_fn  # not needed: forward passes only
        sums: dict[str, torch.Tensor] = {}
        hooks = []

        def hook_for(name: str):  # type: ignore[no-untyped-def]
            def hook(_m: nn.Module, _i: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
                if isinstance(out, torch.Tensor) and out.dim() >= 2:
                    s = self._statistic(torch.relu(out.detach()))
                    sums[name] = sums.get(name, torch.zeros_like(s)) + s
            return hook

        for name, mod in model.named_modules():
            if isinstance(mod, _TYPES):
                hooks.append(mod.register_forward_hook(hook_for(name)))
        was_training = model.training
        model.eval()
        n = 0
        try:
            for x, _y in batches:
                model(x)
                n += 1
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
        if n == 0:
            raise PruningError(f"{type(self).__name__} needs at least one batch; pass data=<a DataLoader>")
        self.stats = {k: v / n for k, v in sums.items()}

    def bind(self, model: nn.Module) -> None:
        """Map ``model``'s modules to the statistics (by module name)."""
        if not self.stats:
            raise PruningError(f"{type(self).__name__} used before collect(); pass data=<a DataLoader> to prune()")
        self._names = {m: n for n, m in model.named_modules()}

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        scores = torch.zeros(len(group[0].idxs), dtype=torch.float32)
        count = 0
        for i, (dep, idxs) in enumerate(group):
            if dep.pruning_fn not in _OUT_FNS:
                continue
            name = self._names.get(dep.layer)
            stat = self.stats.get(name) if name is not None else None
            root_idxs = group[i].root_idxs
            if stat is None or any(r is None for r in root_idxs):
                continue
            scores.scatter_add_(0, torch.tensor(root_idxs), stat[torch.tensor(idxs)].float())
            count += 1
        if count == 0:
            return None
        scores /= count
        mean = scores.mean()
        return scores / mean if mean > 0 else scores


@IMPORTANCE.register("activation")
class MeanActivationImportance(_ActivationStats):
    """Mean post-ReLU activation of each channel (higher = more important)."""

    @staticmethod
    def _statistic(out: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(out.dim()) if d != 1]
        return out.mean(dim=dims)


@IMPORTANCE.register("apoz")
class APoZImportance(_ActivationStats):
    """1 − APoZ: the fraction of positive post-ReLU activations of each channel."""

    @staticmethod
    def _statistic(out: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(out.dim()) if d != 1]
        return (out > 0).float().mean(dim=dims)
