"""``finetune_job(...)``: fine-tune (or QAT-train) a model on one process or under ``torchrun``, from Python.

This is the work of ``edgeslim finetune`` and of the ``launcher: torchrun`` steps of
``edgeslim compress``: every rank checks that it holds the same input model (sha256), optionally
prunes it (checked identical), measures top-1 before (the evaluation split sharded over the
ranks), trains with :func:`edgeslim.finetune` or :func:`~edgeslim.plugin.quantization.qat.train_qat`
(both run :func:`edgeslim.train.train_loop`, under DDP when torchrun started the process), checks
that the ranks agree on the final weights and measures top-1 after. Saving and printing stay
with the caller (rank 0).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgeslim import distributed
from edgeslim.data.sources import DataSource
from edgeslim.plugin.pruning.config import PruneConfig
from edgeslim.plugin.quantization.config import QuantConfig
from edgeslim.train import resolve_torch_device, sharded_top1

#: When this process imported the module (log lines give the seconds since).
_START = time.perf_counter()


def rank_log(message: str) -> None:
    """A log line on stderr, prefixed with this process's rank (``[rank 1/2]``), ending with the seconds since start."""
    line = f"[rank {distributed.rank()}/{distributed.world_size()}] {message} (at {time.perf_counter() - _START:.1f} s)\n"
    sys.stderr.flush()  # whatever this process printed before goes first
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream (tests, notebooks): no descriptor
        sys.stderr.write(line)
        return
    os.write(fd, line.encode())  # one write: the ranks' lines do not interleave


@dataclass
class FinetuneRun:
    """What :func:`finetune_job` did (the same on every rank, except where noted).

    Attributes:
        final: The fine-tuned ``nn.Module``, or the ``QuantResult`` of QAT.
        trained: The trained module (``final`` itself, or the converted graph of a QAT run).
        steps: Optimizer steps (per rank).
        seconds: Training wall time.
        top1_before: Top-1 (fraction) before training, over ``eval_images`` (all ranks together).
        top1_after: Top-1 after training.
        eval_images: Images evaluated.
        weights_sha256: sha256 of ``trained``'s state_dict, checked equal on every rank.
        world_size: Ranks that trained together.
        backend: The process group's backend (None on one process).
        device: Where training and evaluation ran.
        pruned_sha256: sha256 of the pruned model (None without ``prune``).
        params_after_prune: Parameters after pruning (None without ``prune``).
    """

    final: Any
    trained: nn.Module
    steps: int
    seconds: float
    top1_before: float
    top1_after: float
    eval_images: int
    weights_sha256: str
    world_size: int
    backend: str | None
    device: str
    pruned_sha256: str | None = None
    params_after_prune: int | None = None

    def summary(self) -> dict[str, Any]:
        """The JSON-able numbers (no model)."""
        return {"steps": self.steps, "seconds": round(self.seconds, 2), "top1_before": self.top1_before,
                "top1_after": self.top1_after, "eval_images": self.eval_images,
                "weights_sha256": self.weights_sha256, "ranks_agree": True, "world_size": self.world_size,
                "backend": self.backend, "device": self.device}


def finetune_job(
    model: nn.Module,
    source: DataSource,
    example: torch.Tensor,
    *,
    epochs: float,
    lr: float,
    batch_size: int,
    teacher: nn.Module | None = None,
    qat: QuantConfig | None = None,
    prune: PruneConfig | None = None,
    eval_limit: int = 10000,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    name: str = "the model",
    log: Callable[[str], None] = rank_log,
    on_step: Callable[[int, int], None] | None = None,
) -> FinetuneRun:
    """Fine-tune ``model`` (in place, unless ``qat`` or ``prune`` build a new one) on this rank.

    Args:
        model: The float (possibly pruned) model; the same on every rank.
        source: Training and evaluation data.
        example: An NCHW example input of batch 2 (QAT export, pruning trace).
        epochs: Epochs over the training split (fractions allowed).
        lr: Peak learning rate (one-cycle SGD; QAT: cosine decay).
        batch_size: Batch size per rank.
        teacher: Distil from this float model.
        qat: Train with QAT under this configuration (``final`` is then a ``QuantResult``).
        prune: Prune on every rank first (checked identical across ranks).
        eval_limit: Evaluate top-1 on the first ``eval_limit`` evaluation images.
        seed: Data order, augmentation and sampler seed (the same on every rank).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (under torchrun with NCCL, auto is this rank's GPU).
        name: What ``model`` is, in log lines.
        log: Where log lines go (default: stderr, prefixed with the rank).
        on_step: Called with ``(step, total)`` after each step.

    Returns:
        A :class:`FinetuneRun`; the models in it are on the CPU.

    Raises:
        edgeslim.distributed.DistributedMismatchError: The ranks hold different input, pruned or final models.
        edgeslim.errors.ConfigError: A bad ``device`` or ``epochs``, or data that cannot be sharded.
    """
    from edgeslim.plugin.pruning.finetune import finetune
    from edgeslim.plugin.pruning.unstructured import Masks, masks_of

    dev = resolve_torch_device(device)
    world = distributed.world_size()
    agree = f"; the same on all {world} ranks" if world > 1 else ""
    digest = distributed.check_same(model, "the input model")  # every rank loaded the same model
    log(f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters, sha256 {digest[:16]}{agree}")
    net, pruned = model, None
    if prune is not None:
        net, pruned = _prune(model, source, example[:1], prune, batch_size, seed)
        log(f"pruned to {prune.target} ({prune.criterion}): {sum(p.numel() for p in net.parameters()):,} "
            f"parameters, sha256 {pruned[:16]}{agree}")
    test = source.eval_loader(250, limit=eval_limit)
    top1_before, n_eval = sharded_top1(net, test, device=dev)
    log(f"top-1 before: {100 * top1_before:.2f} % on {n_eval} evaluation images")
    train = distributed.distributed_sampler(source.train_loader(batch_size, augment=True, seed=seed), seed=seed)
    steps = max(1, round(epochs * len(train)))
    log(f"training {steps} steps of {len(train)} per epoch on {dev}, batch {batch_size} per rank, world size {world}"
        + (f", QAT {qat.name}" if qat is not None else ""))
    t0 = time.perf_counter()
    final: Any
    if qat is not None:
        from edgeslim.plugin.quantization import convert, prepare_qat
        from edgeslim.plugin.quantization.qat import train_qat

        prepared = prepare_qat(net, example, qat)  # net itself: the saved file records its architecture
        train_qat(prepared, train, steps=steps, lr=lr, teacher=teacher, cosine=True, seed=seed, device=dev,
                  on_step=None if on_step is None else lambda s, _loss: on_step(s, steps))
        final = convert(prepared)
        trained: nn.Module = final.model
    else:
        found = masks_of(net)
        masks = Masks(net, dict(found)) if found else None
        finetune(net, train, epochs=epochs, lr=lr, teacher=teacher, masks=masks, seed=seed, device=dev,
                 on_step=None if on_step is None else lambda s, total, _loss: on_step(s, total))
        if masks is not None:
            masks.make_permanent()
        final = trained = net
    seconds = time.perf_counter() - t0
    sha = distributed.check_same(trained, "the final weights")  # raises, naming the ranks, if they disagree
    log(f"final weights sha256 {sha[:16]}" + (f"; ranks agree ({world} of {world})" if world > 1 else ""))
    top1_after, _ = sharded_top1(trained, test, device=dev)
    log(f"top-1 after: {100 * top1_after:.2f} % on {n_eval} evaluation images")
    from torch import distributed as dist

    backend = str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else None
    return FinetuneRun(final=final, trained=trained, steps=steps, seconds=seconds, top1_before=top1_before,
                       top1_after=top1_after, eval_images=n_eval, weights_sha256=sha, world_size=world,
                       backend=backend, device=str(dev), pruned_sha256=pruned,
                       params_after_prune=None if pruned is None else sum(p.numel() for p in trained.parameters()))


def _prune(net: nn.Module, source: DataSource, example: torch.Tensor, config: PruneConfig, batch_size: int,
           seed: int) -> tuple[nn.Module, str]:
    """Prune ``net`` on this rank (the same seeded data on every rank); check that all ranks hold the same result."""
    from edgeslim.plugin.pruning import prune

    stats = source.train_loader(batch_size, seed=seed + 1)  # read by data-driven criteria only
    result = prune(net, example, config, data=stats)
    return result.model, distributed.check_same(result.model, "the pruned model")


__all__ = ["FinetuneRun", "finetune_job", "rank_log"]
