import copy

import pytest
import torch
from torch import nn

from edgeslim.data import evaluate
from edgeslim.errors import ConfigError
from edgeslim.plugin.pruning import PruneConfig, Target, prune
from edgeslim.plugin.pruning.finetune import distillation_loss, finetune


def test_distillation_loss_zero_kd_when_equal() -> None:
    logits = torch.randn(4, 10)
    y = torch.randint(0, 10, (4,))
    full = distillation_loss(logits, logits, y, alpha=1.0)
    assert full.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_finetune_recovers_accuracy_on_real_data(resnet18_fmnist: nn.Module, test_loader_1k, train_loader_small) -> None:
    """Uniformly pruned ResNet-18 (accuracy collapses) recovers with a short distilled fine-tune on real data."""
    x = torch.randn(1, 3, 32, 32)
    res = prune(resnet18_fmnist, x, PruneConfig(target=Target.parse("ratio=0.3")))
    before = evaluate(res.model, test_loader_1k)
    teacher = copy.deepcopy(resnet18_fmnist)
    hist = finetune(res.model, train_loader_small, epochs=1, lr=0.02, teacher=teacher, eval_fn=lambda m: evaluate(m, test_loader_1k))
    after = evaluate(res.model, test_loader_1k)
    assert after > before + 0.2 and after > 0.75, (before, after)
    assert hist.history[-1]["eval"] == pytest.approx(after)


def test_finetune_rejects_bad_args(small_net: nn.Module) -> None:
    with pytest.raises(ConfigError):
        finetune(small_net, [], epochs=1)
    with pytest.raises(ConfigError):
        finetune(small_net, [(torch.randn(1, 3, 8, 8), torch.tensor([0]))], epochs=0)
