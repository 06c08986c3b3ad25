"""Quantization-aware training helpers: a schedule that freezes observers and BatchNorm after N steps.

Drop-in use inside your own loop::

    qmodel = prepare_qat(model, x, "int8")
    sched = QATSchedule(freeze_observers_after=200, freeze_bn_after=150)
    opt = torch.optim.SGD(qmodel.parameters(), lr=1e-3, momentum=0.9)
    for x, y in loader:
        loss = F.cross_entropy(qmodel(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        sched.step(qmodel)
    result = convert(qmodel)

Under ``torchrun`` (process group joined with :func:`edgeslim.distributed.init_from_env`),
:func:`train_qat` runs data-parallel: the prepared graph must be the same on every rank
(checked), it is wrapped in ``DistributedDataParallel``, each rank reads its shard through a
``DistributedSampler``, and at the end rank 0's buffers (ranges, BatchNorm statistics) are
copied to every rank and the final weights are checked to agree.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchao.quantization.pt2e.export_utils import _replace_batchnorm
from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

from edgeslim import distributed
from edgeslim.plugin.quantization.errors import QuantConfigError


def freeze_observers(model: nn.Module) -> int:
    """Stop every observer/fake-quant of ``model`` from updating its ranges; returns how many."""
    n = 0
    for mod in model.modules():
        if isinstance(mod, FakeQuantizeBase):
            mod.disable_observer()
            n += 1
    return n


#: The prepared QAT graphs whose BatchNorm :func:`freeze_bn` froze (a side table, not an attribute).
_BN_FROZEN: weakref.WeakSet[torch.fx.GraphModule] = weakref.WeakSet()


def freeze_bn(model: torch.fx.GraphModule) -> None:
    """Use BatchNorm running statistics (and stop updating them) in a prepared QAT graph."""
    _replace_batchnorm(model, train_to_eval=True)
    _BN_FROZEN.add(model)


def bn_frozen(model: nn.Module) -> bool:
    """Whether :func:`freeze_bn` froze ``model``'s BatchNorm."""
    return isinstance(model, torch.fx.GraphModule) and model in _BN_FROZEN


@dataclass
class QATSchedule:
    """Freezes observers and BatchNorm statistics after a number of optimizer steps.

    Attributes:
        freeze_observers_after: Steps after which quantization ranges stop moving (None: never).
        freeze_bn_after: Steps after which BatchNorm uses its running statistics (None: never).
    """

    freeze_observers_after: int | None = None
    freeze_bn_after: int | None = None
    steps: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        for name in ("freeze_observers_after", "freeze_bn_after"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise QuantConfigError(f"QATSchedule.{name} must be >= 0, got {v}")

    def step(self, model: nn.Module) -> None:
        """Call once after each optimizer step."""
        self.steps += 1
        if self.freeze_observers_after is not None and self.steps == self.freeze_observers_after:
            freeze_observers(model)
        if self.freeze_bn_after is not None and self.steps == self.freeze_bn_after and isinstance(model, torch.fx.GraphModule):
            freeze_bn(model)


def _size_observers(prepared: nn.Module, loader: Iterable[Any], dev: torch.device) -> None:
    """One forward pass (no gradient) before ``DistributedDataParallel`` wraps the graph.

    Per-channel fake-quants resize their scale/zero-point buffers on their first forward, which
    fails (``Trying to resize storage that is not resizable``) once DDP has synchronised the
    buffers; after this pass they have their final shapes (DDP then copies rank 0's values).
    """
    first = next(iter(getattr(loader, "loader", loader)), None)
    if first is None:
        raise QuantConfigError("the QAT training loader yielded no batches")
    with torch.no_grad():
        prepared.train()
        prepared(first[0].to(dev))


def train_qat(
    prepared: torch.fx.GraphModule,
    loader: Iterable[Any],
    *,
    steps: int,
    lr: float = 1e-4,
    schedule: QATSchedule | None = None,
    on_step: Callable[[int, float], None] | None = None,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    cosine: bool = False,
    seed: int = 0,
) -> float:
    """A minimal QAT loop (SGD + momentum, cross-entropy) for ``steps`` batches; returns the mean loss.

    Your own loop works just as well; this is what the CLI and the benchmark use.

    Args:
        prepared: From :func:`~edgeslim.plugin.quantization.api.prepare_qat`.
        loader: ``(images, labels)`` batches; cycled until ``steps`` are done.
        steps: Optimizer steps.
        lr: (Peak) learning rate.
        schedule: Observer/BN freezing; default: observers after 3/4 of the steps, BN after 1/2.
        on_step: Called with ``(step, loss)`` after each step.
        teacher: A float model to distil from (half cross-entropy, half KL at ``temperature``);
            the usual teacher is the model before quantization.
        temperature: Distillation temperature.
        cosine: Cosine-decay the learning rate from ``lr`` to 0 over ``steps``.
        seed: Shuffling seed of the ``DistributedSampler`` under torchrun (the same on every rank).

    Raises:
        QuantConfigError: ``steps < 1`` or an empty loader.
        edgeslim.distributed.DistributedMismatchError: Under torchrun, the ranks started from
            different prepared graphs or ended with different weights (names the ranks).
    """
    if steps < 1:
        raise QuantConfigError(f"train_qat needs steps >= 1, got {steps}")
    net: nn.Module = prepared
    dev = distributed.device()
    if distributed.active():
        distributed.check_same(prepared, "the QAT-prepared model")
        loader = distributed.distributed_sampler(loader, seed=seed)
        _size_observers(prepared.to(dev), loader, dev)
        net = distributed.wrap_ddp(prepared)
    opt = torch.optim.SGD([p for p in prepared.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    sched = schedule or QATSchedule(freeze_observers_after=max(steps * 3 // 4, 1), freeze_bn_after=max(steps // 2, 1))
    if teacher is not None:
        teacher.to(dev).eval()
    total, done = 0.0, 0
    net.train()
    while done < steps:
        seen = 0
        for xb, yb in loader:
            x, y = xb.to(dev), yb.to(dev)
            seen += 1
            if cosine:
                for group in opt.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * done / steps))
            out = net(x)
            loss = F.cross_entropy(out, y)
            if teacher is not None:
                with torch.no_grad():
                    soft = F.softmax(teacher(x) / temperature, dim=1)
                kd = F.kl_div(F.log_softmax(out / temperature, dim=1), soft, reduction="batchmean") * temperature**2
                loss = 0.5 * loss + 0.5 * kd
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step(prepared)
            total += float(loss.detach())
            done += 1
            if on_step is not None:
                on_step(done, float(loss.detach()))
            if done >= steps:
                break
        if seen == 0:
            raise QuantConfigError("the QAT training loader yielded no batches")
    if distributed.active():
        distributed.sync_buffers(prepared)
        distributed.check_same(prepared, "the QAT weights")
    return total / max(done, 1)


__all__ = ["QATSchedule", "bn_frozen", "freeze_bn", "freeze_observers", "train_qat"]
