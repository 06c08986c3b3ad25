"""Trained quantization: fine-tune each layer's centroids by the summed gradient of its weights.

While training, a layer's weight is computed as ``table[index]`` where ``table`` is its
centroids plus a zero (the pruned positions) and ``index`` the fixed assignment of every
position. Autograd then gives each centroid the sum of the gradients of the weights that share
it — the update of Han et al. — and pruned weights stay exactly zero. When training ends the
weights are baked back as plain parameters holding exactly ``table[index]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgeslim.deep_compression.codebook import Codebook
from edgeslim.train import Objective, OnStep, device_of, train_loop


class SharedWeights(nn.Module):
    """A parametrization: ``weight = cat(centroids, 0)[index]``."""

    def __init__(self, shape: torch.Size, positions: torch.Tensor, book: Codebook) -> None:
        super().__init__()
        self.shape = shape
        self.centroids = nn.Parameter(book.centroids.clone().to(torch.float32))
        index = torch.full((shape.numel(),), book.centroids.numel(), dtype=torch.long)
        index[positions] = book.codes
        self.index: torch.Tensor
        self.register_buffer("index", index)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        """The shared-weight tensor (``original`` is ignored)."""
        del original
        table = torch.cat([self.centroids, self.centroids.new_zeros(1)])
        return table[self.index].view(self.shape)


def _module(model: nn.Module, param_name: str) -> nn.Module:
    return model.get_submodule(param_name.rsplit(".", 1)[0]) if "." in param_name else model


def train_centroids(
    model: nn.Module,
    layers: dict[str, tuple[torch.Tensor, Codebook]],
    train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: float,
    lr: float,
    teacher: nn.Module | None = None,
    on_step: Callable[[int, int], None] | None = None,
    device: torch.device | None = None,
) -> dict[str, Codebook]:
    """Fine-tune the centroids of ``layers`` (and the model's other float parameters) in place.

    Args:
        model: The pruned model; each layer's weight is replaced by its codebook values.
        layers: Weight name -> (flat positions of the stored weights, their codebook).
        train_loader: Training batches (a DataLoader: its length sets the step count).
        epochs: Passes over the data (fractions allowed; 0: just bake the codebooks in).
        lr: Adam learning rate.
        teacher: Float model for knowledge distillation (eval mode), or ``None`` for plain CE.
        on_step: Called with ``(step, total)``.
        device: Where training runs (None: where the model is); model and teacher come back afterwards.

    Returns:
        The codebooks after training (same codes, trained centroids).
    """
    shared: dict[str, SharedWeights] = {}
    for name, (positions, book) in layers.items():
        mod = _module(model, name)
        p = SharedWeights(mod.get_parameter("weight").shape, positions, book)
        parametrize.register_parametrization(mod, "weight", p, unsafe=True)
        mod.get_parameter("parametrizations.weight.original").requires_grad_(False)
        shared[name] = p
    try:
        steps = round(epochs * len(train_loader)) if isinstance(train_loader, Sized) else 0
        if steps > 0:
            _train(model, train_loader, steps, lr, teacher, on_step, device)
    finally:
        with torch.no_grad():
            for name in shared:
                mod = _module(model, name)
                parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
                mod.get_parameter("weight").requires_grad_(True)
    model.eval()
    return {n: Codebook(p.centroids.detach().clone(), layers[n][1].codes, layers[n][1].bits) for n, p in shared.items()}


def _train(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float,
    teacher: nn.Module | None,
    on_step: Callable[[int, int], None] | None,
    device: torch.device | None,
) -> None:
    """Adam over the centroids and the other float parameters, batch-norm statistics frozen, in the one loop."""
    # the centroids are parameters of the SharedWeights parametrizations: autograd sums their weights' gradients
    params = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith(".original")]
    opt = torch.optim.Adam(params, lr=lr)
    callbacks = [OnStep(lambda step, total, _loss: on_step(step, total))] if on_step is not None else []
    home, teacher_home = device_of(model), device_of(teacher) if teacher is not None else None
    try:
        train_loop(model, loader, steps=steps, optimizer=opt, objective=Objective(0.0, 0.7, 4.0), teacher=teacher,
                   device=device, callbacks=callbacks, set_mode=_train_keep_bn,
                   what="the model whose centroids to train", final_what="the trained centroids")
    finally:
        model.to(home)
        if teacher is not None and teacher_home is not None:
            teacher.to(teacher_home)
    model.eval()


def _train_keep_bn(model: nn.Module) -> None:
    """Training mode, but batch-norm keeps the statistics it measured."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


__all__ = ["SharedWeights", "train_centroids"]
