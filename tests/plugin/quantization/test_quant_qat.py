"""QAT: drop-in training loop, schedule freezing, STE gradients, exact convert."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgeslim.data import evaluate
from edgeslim.plugin.quantization import QATSchedule, convert, prepare_qat
from edgeslim.plugin.quantization.api import _dequantized_weights
from edgeslim.plugin.quantization.errors import QuantConfigError
from edgeslim.plugin.quantization.fake_quant import GridFakeQuantizePerChannel
from edgeslim.plugin.quantization.qat import bn_frozen

X = torch.zeros(2, 3, 32, 32)


def test_log2_qat_trains_through_the_ste_and_converts_exactly(
    resnet18_fmnist: torch.nn.Module, fp_top1_resnet_1k: float, train_loader_small: torch.utils.data.DataLoader,
    test_loader_1k: torch.utils.data.DataLoader,
) -> None:
    qm = prepare_qat(resnet18_fmnist, X, "log2:4")
    sched = QATSchedule(freeze_observers_after=2, freeze_bn_after=1)
    opt = torch.optim.SGD(qm.parameters(), lr=1e-4, momentum=0.9)
    before = qm.get_submodule("layer1.0.conv1").weight.detach().clone()
    losses = []
    for step, (x, y) in enumerate(train_loader_small):
        loss = F.cross_entropy(qm(x[:16]), y[:16])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step(qm)
        losses.append(float(loss.detach()))
        if step == 2:
            break
    assert not torch.equal(before, qm.get_submodule("layer1.0.conv1").weight)  # gradients reached the weights
    fqs = [m for m in qm.modules() if isinstance(m, GridFakeQuantizePerChannel)]
    assert len(fqs) == 21 and all(int(m.observer_enabled[0]) == 0 for m in fqs)  # frozen by the schedule
    assert bn_frozen(qm)
    result = convert(qm)
    deq = _dequantized_weights(result.model)
    for name, cw in result.coded_weights.items():
        assert torch.equal(cw.decode(), deq[name])
    assert fp_top1_resnet_1k - evaluate(result.model, test_loader_1k) < 0.03


def test_schedule_rejects_negative_steps() -> None:
    with pytest.raises(QuantConfigError):
        QATSchedule(freeze_observers_after=-1)


def test_train_qat_distils_from_a_teacher_with_a_cosine_schedule(
    resnet18_fmnist: torch.nn.Module, train_loader_small: torch.utils.data.DataLoader,
) -> None:
    from edgeslim.plugin.quantization.qat import train_qat

    small = [(x[:16], y[:16]) for (x, y), _ in zip(train_loader_small, range(3), strict=False)]
    qm = prepare_qat(resnet18_fmnist, X, "int8")
    seen: list[float] = []
    loss = train_qat(qm, small, steps=3, lr=1e-3, teacher=resnet18_fmnist, cosine=True, on_step=lambda s, v: seen.append(v))
    assert len(seen) == 3 and all(math.isfinite(v) and v >= 0 for v in seen)  # CE + KL
    assert loss == pytest.approx(sum(seen) / 3)
    with pytest.raises(QuantConfigError, match="no batches"):
        train_qat(prepare_qat(resnet18_fmnist, X, "int8"), [], steps=1)



def test_frozen_batchnorm_stays_frozen_through_eval_and_train() -> None:
    from edgeslim.plugin.quantization.api import prepare_qat
    from edgeslim.plugin.quantization.qat import freeze_bn

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))
    gm = prepare_qat(net, (torch.randn(2, 3, 16, 16),), "int8")

    def running_means() -> list[torch.Tensor]:
        return [b.clone() for n, b in gm.named_buffers() if n.endswith("running_mean")]

    gm.train()
    gm(torch.randn(4, 3, 16, 16) * 4 + 2)  # not frozen yet: the statistics move
    moving = running_means()
    assert moving and any(float(m.abs().sum()) > 0 for m in moving)
    freeze_bn(gm)
    gm.eval()
    gm.train()  # a validation pass in the user's loop
    gm(torch.randn(4, 3, 16, 16) * 9 - 5)
    for before, after in zip(moving, running_means(), strict=True):
        assert torch.equal(before, after)
