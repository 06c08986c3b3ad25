"""ONE training loop and ONE top-1 evaluation, used by every caller in edgeslim.

Fine-tuning (:func:`edgeslim.finetune`), QAT (:func:`edgeslim.plugin.quantization.qat.train_qat`),
the alternating prune/QAT pipeline and Deep Compression's centroid training all run
:func:`train_loop` with their own optimizer, schedule and :class:`Callback` hooks; top-1 everywhere
is :func:`count_top1` (and :func:`evaluate` / :func:`sharded_top1` on top of it).
``--device`` is resolved by :func:`resolve_torch_device`.
"""

from edgeslim.train.device import DEVICE_CHOICES, OnDevice, device_of, resolve_torch_device, to_device
from edgeslim.train.evaluate import Top1, count_top1, evaluate, sharded_top1, top1_on
from edgeslim.train.loop import (
    Callback,
    CosineLR,
    EmptyLoaderError,
    LoopResult,
    LoopState,
    OnStep,
    nesterov_sgd,
    one_cycle,
    train_loop,
    train_mode,
)
from edgeslim.train.losses import Objective, distillation_loss

__all__ = [
    "DEVICE_CHOICES",
    "Callback",
    "CosineLR",
    "EmptyLoaderError",
    "LoopResult",
    "LoopState",
    "Objective",
    "OnDevice",
    "OnStep",
    "Top1",
    "count_top1",
    "device_of",
    "distillation_loss",
    "evaluate",
    "nesterov_sgd",
    "one_cycle",
    "resolve_torch_device",
    "sharded_top1",
    "to_device",
    "top1_on",
    "train_loop",
    "train_mode",
]
