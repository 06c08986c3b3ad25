"""The training objective: cross-entropy, or knowledge distillation mixed in with :func:`distillation_loss`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from edgeslim.errors import ConfigError


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
    alpha: float = 0.5, temperature: float = 4.0, label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``(1-α)·CE(student, y) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))`` (Hinton et al., 2015).

    Args:
        student_logits: ``[N, C]`` logits of the model being trained.
        teacher_logits: ``[N, C]`` logits of the frozen teacher.
        labels: ``[N]`` class indices.
        alpha: Weight of the distillation term (0: plain cross-entropy).
        temperature: Softmax temperature of both distributions.
        label_smoothing: Label smoothing of the cross-entropy term.

    Returns:
        The scalar loss.
    """
    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    kd = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean", log_target=True,
    ) * temperature**2
    return (1 - alpha) * ce + alpha * kd


@dataclass(frozen=True)
class Objective:
    """What the loop minimises: cross-entropy, or :func:`distillation_loss` when a teacher is given.

    Attributes:
        label_smoothing: Label smoothing of the cross-entropy.
        kd_alpha: Weight of the distillation term (used only with a teacher).
        kd_temperature: Distillation temperature (used only with a teacher).
    """

    label_smoothing: float = 0.0
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ConfigError(f"train: kd_alpha must be in [0, 1], got {self.kd_alpha}")
        if self.kd_temperature <= 0:
            raise ConfigError(f"train: kd_temperature must be > 0, got {self.kd_temperature}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"train: label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def __call__(self, out: torch.Tensor, labels: torch.Tensor, teacher_out: torch.Tensor | None) -> torch.Tensor:
        """The loss of one batch (``teacher_out`` None: cross-entropy only)."""
        if teacher_out is None:
            return F.cross_entropy(out, labels, label_smoothing=self.label_smoothing)
        return distillation_loss(out, teacher_out, labels, self.kd_alpha, self.kd_temperature, self.label_smoothing)


__all__ = ["Objective", "distillation_loss"]
