"""``distillation_loss`` and ``Objective``: the values of the old hand-written mixes on fixed tensors."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from edgeslim.errors import ConfigError
from edgeslim.train import Objective, distillation_loss

# fixed logits (no randomness): 3 images, 4 classes
STUDENT = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -2.0], [-1.0, 1.5, 0.5, 0.25]])
TEACHER = torch.tensor([[1.5, 1.0, -0.5, 0.0], [0.0, 0.0, 2.0, -1.0], [-2.0, 2.5, 0.0, 0.5]])
LABELS = torch.tensor([0, 2, 1])


def _old_qat_mix(out: torch.Tensor, t_out: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """train_qat's former loss, verbatim: 0.5 * CE + 0.5 * T^2 * KL(softmax(teacher/T) || ...)."""
    loss = F.cross_entropy(out, y)
    soft = F.softmax(t_out / temperature, dim=1)
    kd = F.kl_div(F.log_softmax(out / temperature, dim=1), soft, reduction="batchmean") * temperature**2
    return 0.5 * loss + 0.5 * kd


def test_alpha_half_equals_the_old_qat_mix() -> None:
    for temperature in (1.0, 4.0):
        new = distillation_loss(STUDENT, TEACHER, LABELS, alpha=0.5, temperature=temperature)
        old = _old_qat_mix(STUDENT, TEACHER, LABELS, temperature)
        assert float(new) == pytest.approx(float(old), rel=1e-6, abs=1e-7)


def test_hand_computed_value_and_edge_weights() -> None:
    ce = F.cross_entropy(STUDENT, LABELS, label_smoothing=0.1)
    p_t = F.softmax(TEACHER / 2.0, dim=1)
    kl = float((p_t * (p_t.log() - F.log_softmax(STUDENT / 2.0, dim=1))).sum(1).mean()) * 4.0
    got = distillation_loss(STUDENT, TEACHER, LABELS, alpha=0.7, temperature=2.0, label_smoothing=0.1)
    assert float(got) == pytest.approx(0.3 * float(ce) + 0.7 * kl, rel=1e-6)
    assert float(distillation_loss(STUDENT, TEACHER, LABELS, alpha=0.0)) == pytest.approx(
        float(F.cross_entropy(STUDENT, LABELS)), rel=1e-7)
    assert float(distillation_loss(STUDENT, STUDENT, LABELS, alpha=1.0)) == pytest.approx(0.0, abs=1e-6)


def test_objective_without_teacher_is_cross_entropy_and_with_one_distils() -> None:
    obj = Objective(label_smoothing=0.1, kd_alpha=0.7, kd_temperature=4.0)
    assert float(obj(STUDENT, LABELS, None)) == pytest.approx(
        float(F.cross_entropy(STUDENT, LABELS, label_smoothing=0.1)), rel=1e-7)
    assert float(obj(STUDENT, LABELS, TEACHER)) == pytest.approx(
        float(distillation_loss(STUDENT, TEACHER, LABELS, 0.7, 4.0, 0.1)), rel=1e-7)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kd_alpha": 1.5}, "train: kd_alpha must be in [0, 1], got 1.5"),
    ({"kd_temperature": 0.0}, "train: kd_temperature must be > 0, got 0.0"),
    ({"label_smoothing": 1.0}, "train: label_smoothing must be in [0, 1), got 1.0"),
])
def test_bad_objective_values_named(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Objective(**kwargs)
    assert str(info.value) == message
