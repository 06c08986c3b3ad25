"""Parameter (unstructured) pruning: masks on individual weights.

Masks are kept beside the model (in a side table read with :func:`masks_of`, parameter name ->
bool tensor, never as an attribute on the model; saved with it by ``edgeslim.save``) and
re-applied after every optimizer step while fine-tuning (:meth:`Masks.attach`), so the
parameters, their names and the optimizer state stay those of the dense model. When training is
over, :meth:`Masks.make_permanent` zeroes the weights for good and drops the masks.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgeslim.errors import ConfigError, PruningError
from edgeslim.plugin.pruning.config import LayerRule
from edgeslim.plugin.pruning.importance.base import Batch, LossFn
from edgeslim.registry import Registry

#: name -> function(param, grad or None) -> per-weight score (higher = keep)
WEIGHT_SCORES: Registry[Any] = Registry("unstructured criterion")


@WEIGHT_SCORES.register("magnitude")
def magnitude_score(w: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    """|w|."""
    del g
    return w.detach().abs()


@WEIGHT_SCORES.register("gradient")
def gradient_score(w: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    """|w · ∂L/∂w| (first-order Taylor saliency of each weight)."""
    if g is None:
        raise PruningError("gradient criterion needs gradients: pass data=<a DataLoader> to prune()")
    return (w.detach() * g).abs()


#: Side table: the keep-masks in force on a model (parameter name -> bool tensor), filled by
#: :func:`compute_masks` and by loading a pruned file that has masks, emptied by
#: :meth:`Masks.make_permanent`. The pruned saved-model format stores them with the weights.
_MASKS: weakref.WeakKeyDictionary[nn.Module, dict[str, torch.Tensor]] = weakref.WeakKeyDictionary()


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unstructured keep-masks in force on ``model`` (empty if none), by parameter name."""
    return dict(_MASKS.get(model, {}))


def remember_masks(model: nn.Module, masks: dict[str, torch.Tensor] | None) -> None:
    """Record ``masks`` as in force on ``model`` (``None`` or empty: forget them)."""
    if masks:
        _MASKS[model] = masks
    else:
        _MASKS.pop(model, None)


def prunable_weights(model: nn.Module, ignored: Sequence[nn.Module] = ()) -> dict[str, nn.Parameter]:
    """The ``weight`` of every conv and linear layer not in ``ignored``, by parameter name."""
    out: dict[str, nn.Parameter] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.conv._ConvNd | nn.Linear) and mod not in ignored:
            w = getattr(mod, "weight", None)
            if isinstance(w, nn.Parameter):
                out[f"{name}.weight" if name else "weight"] = w
    return out


@dataclass
class Masks:
    """Boolean keep-masks for some parameters of a model."""

    model: nn.Module
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    _handles: list[Any] = field(default_factory=list)

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the masked weights (call after each optimizer step if not attached)."""
        params = dict(self.model.named_parameters())
        for name, mask in self.masks.items():
            p = params.get(name)
            if p is None or p.shape != mask.shape:
                raise PruningError(f"mask for {name!r} no longer matches the model (was it pruned structurally since?)")
            p.mul_(mask.to(p.device, p.dtype))

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Re-apply the masks after every ``optimizer.step()``."""
        self._handles.append(optimizer.register_step_post_hook(lambda *_: self.apply()))

    def detach(self) -> None:
        """Remove optimizer hooks installed by :meth:`attach`."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def make_permanent(self) -> nn.Module:
        """Zero the weights for good, detach from optimizers and drop the masks from the model."""
        self.apply()
        self.detach()
        remember_masks(self.model, None)
        return self.model

    def report(self) -> list[dict[str, Any]]:
        """Per-parameter sparsity: ``name``, ``numel``, ``zeros``, ``sparsity``."""
        rows = []
        for name, m in self.masks.items():
            zeros = int((~m).sum())
            rows.append({"name": name, "numel": m.numel(), "zeros": zeros, "sparsity": zeros / max(m.numel(), 1)})
        return rows

    def sparsity(self) -> float:
        """Fraction of masked weights over all masked parameters."""
        total = sum(m.numel() for m in self.masks.values())
        return sum(int((~m).sum()) for m in self.masks.values()) / max(total, 1)


def _gradients(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn) -> dict[str, torch.Tensor]:
    saved = {n: p.grad for n, p in model.named_parameters()}
    was = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    try:
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            for n, p in model.named_parameters():
                if p.grad is not None:
                    sums[n] = sums.get(n, torch.zeros_like(p)) + p.grad.detach().abs()
    finally:
        for n, p in model.named_parameters():
            p.grad = saved[n]
        model.train(was)
    return sums


def compute_masks(
    model: nn.Module,
    sparsity: float,
    *,
    criterion: str = "magnitude",
    scope: str = "global",
    ignored: Sequence[nn.Module] = (),
    rules: Sequence[LayerRule] = (),
    batches: Iterable[Batch] = (),
    loss_fn: LossFn | None = None,
) -> Masks:
    """Masks that zero ``sparsity`` of the prunable weights, ranked globally or per layer.

    Layer rules with a ``sparsity`` override the global value for the layers they match (those
    layers are then ranked on their own).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in ("global", "layer"):
        raise ConfigError(f"scope must be 'global' or 'layer', got {scope!r}")
    score_fn = WEIGHT_SCORES.get(criterion)
    weights = prunable_weights(model, ignored)
    if not weights:
        raise PruningError(f"{type(model).__name__} has no conv/linear weights to prune")
    grads = _gradients(model, batches, loss_fn or nn.functional.cross_entropy) if criterion == "gradient" else {}
    scores = {n: score_fn(w, grads.get(n)) for n, w in weights.items()}
    per_layer: dict[str, float] = {}
    for n in weights:
        mod_name = n.rsplit(".", 1)[0]
        for r in rules:
            if r.sparsity is not None and r.matches(mod_name):
                per_layer[n] = r.sparsity
    masks: dict[str, torch.Tensor] = {}
    pooled = [n for n in weights if n not in per_layer]
    if scope == "global" and pooled and sparsity > 0:
        flat = torch.cat([scores[n].flatten() for n in pooled])
        k = int(sparsity * flat.numel())
        thr = torch.kthvalue(flat, k).values if k > 0 else flat.min() - 1
        for n in pooled:
            masks[n] = scores[n] > thr
    else:
        per_layer.update(dict.fromkeys(pooled, sparsity))
    for n, s in per_layer.items():
        flat = scores[n].flatten()
        k = int(s * flat.numel())
        if k == 0:
            masks[n] = torch.ones_like(scores[n], dtype=torch.bool)
            continue
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        keep[torch.topk(flat, k, largest=False).indices] = False
        masks[n] = keep.view_as(scores[n])
    result = Masks(model, masks)
    result.apply()
    remember_masks(model, result.masks)
    return result


def l1_penalty(model: nn.Module, strength: float = 1e-5, ignored: Sequence[nn.Module] = ()) -> torch.Tensor:
    """``strength · Σ|w|`` over conv/linear weights: add to the loss to induce unstructured sparsity."""
    ws = prunable_weights(model, ignored).values()
    return strength * sum((w.abs().sum() for w in ws), torch.zeros(()))


def group_lasso_penalty(model: nn.Module, strength: float = 1e-4, ignored: Sequence[nn.Module] = ()) -> torch.Tensor:
    """``strength · Σ_filters √(size) · ‖w_filter‖₂``: add to the loss to push whole output channels to zero."""
    total = torch.zeros(())
    for w in prunable_weights(model, ignored).values():
        flat = w.flatten(1)
        total = total + (flat.shape[1] ** 0.5) * flat.norm(dim=1).sum()
    return strength * total
