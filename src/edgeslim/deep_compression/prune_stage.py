"""Stage 1 of ``pack``: per-layer sparsity from a sensitivity analysis, then iterative magnitude
pruning with fine-tuning that keeps the masks.

The sensitivity table is the pruning plugin's :class:`SensitivityResult` with one "group" per
conv/linear weight (zeroing that weight's smallest magnitudes alone, at each sparsity); its
allocator then gives, for a Lagrange multiplier, the per-layer sparsities of least predicted
damage, and a bisection on the multiplier meets the global sparsity. The masks come from the
plugin's :func:`compute_masks` (magnitude, one rule per layer) and are kept through its
:func:`finetune`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from edgeslim.errors import PruningError
from edgeslim.plugin.pruning.config import LayerRule
from edgeslim.plugin.pruning.finetune import finetune
from edgeslim.plugin.pruning.importance.base import Batch
from edgeslim.plugin.pruning.sensitivity import SensitivityResult, score
from edgeslim.plugin.pruning.unstructured import Masks, compute_masks, magnitude_score, prunable_weights


def layer_sensitivity(
    model: nn.Module,
    batches: Sequence[Batch],
    sparsities: Sequence[float],
    on_progress: Callable[[int, int], None] | None = None,
) -> SensitivityResult:
    """Accuracy and loss on ``batches`` with one layer at a time magnitude-pruned to each sparsity."""
    loss_fn = nn.functional.cross_entropy
    acc0, loss0 = score(model, batches, loss_fn)
    weights = prunable_weights(model)
    total_params = sum(p.numel() for p in model.parameters())
    result = SensitivityResult(acc0, loss0, total_params, 0)
    todo, done = len(weights) * len(sparsities), 0
    for name, w in weights.items():
        saved = w.detach().clone()
        order = torch.argsort(magnitude_score(w, None).flatten())
        for s in sorted(sparsities):
            k = int(s * w.numel())
            with torch.no_grad():
                w.copy_(saved)
                w.view(-1)[order[:k]] = 0.0
            acc, loss = score(model, batches, loss_fn)
            result.rows.append(
                {
                    "group": name,
                    "channels": w.shape[0],
                    "ratio": s,
                    "pruned": k,
                    "accuracy": acc,
                    "loss": loss,
                    "acc_drop": acc0 - acc,
                    "loss_increase": loss - loss0,
                    "params_removed": k,
                    "macs_removed": 0,
                }
            )
            done += 1
            if on_progress:
                on_progress(done, todo)
        with torch.no_grad():
            w.copy_(saved)
    return result


def allocate(table: SensitivityResult, sizes: dict[str, int], sparsity: float, step: float = 0.01) -> dict[str, float]:
    """Per-layer sparsities reaching ``sparsity`` of all ``sizes`` weights with the least predicted loss.

    Raises:
        PruningError: The target exceeds what the measured sparsities can reach.
    """
    if sparsity <= 0:
        return dict.fromkeys(sizes, 0.0)
    alloc = table.allocator("loss_increase", step=step)
    total = sum(sizes.values())

    def reached(lam: float) -> tuple[float, dict[str, float]]:
        ratios = alloc(lam)
        return sum(ratios[n] * sizes[n] for n in sizes) / total, ratios

    lo, hi = 0.0, 1.0
    while reached(hi)[0] < sparsity:
        hi *= 4
        if hi > 1e12:
            raise PruningError(f"sparsity {sparsity} is beyond the per-layer sparsities measured")
    for _ in range(60):
        mid = (lo + hi) / 2
        if reached(mid)[0] >= sparsity:
            hi = mid
        else:
            lo = mid
    # the optimum of a piecewise-linear curve sits on a vertex, so the allocation jumps between
    # lo and hi: blend the two to land on the target exactly
    (s_lo, r_lo), (s_hi, r_hi) = reached(lo), reached(hi)
    t = 1.0 if s_hi <= s_lo else min(1.0, max(0.0, (sparsity - s_lo) / (s_hi - s_lo)))
    return {n: r_lo[n] + t * (r_hi[n] - r_lo[n]) for n in sizes}


def prune_iteratively(
    model: nn.Module,
    per_layer: dict[str, float],
    train_loader: Any,
    *,
    steps: int,
    epochs: float,
    lr: float,
    teacher: nn.Module | None,
    on_step: Callable[[int, int, float], None] | None = None,
    device: torch.device | None = None,
) -> Masks:
    """Prune to ``per_layer`` sparsities in ``steps`` equal increments, fine-tuning after each.

    The masks of every step are kept (re-applied after each optimizer step), and the weights
    are zeroed for good at the end. ``device``: where the fine-tunes train (the model comes back).
    """
    masks: Masks | None = None
    for i in range(1, steps + 1):
        rules = [LayerRule(re.escape(n.rsplit(".", 1)[0]), sparsity=s * i / steps) for n, s in per_layer.items()]
        masks = compute_masks(model, 0.0, scope="layer", rules=rules)
        if epochs > 0:
            finetune(model, train_loader, epochs=epochs / steps, lr=lr, teacher=teacher, masks=masks, on_step=on_step,
                     device=device)
    assert masks is not None
    masks.make_permanent()
    return masks


def teacher_of(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` to distil from."""
    t = copy.deepcopy(model).eval()
    for p in t.parameters():
        p.requires_grad_(False)
    return t


__all__ = ["allocate", "layer_sensitivity", "prune_iteratively", "teacher_of"]
