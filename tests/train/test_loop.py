"""The one training loop: it trains on real Fashion-MNIST, its hooks run in order, QAT runs through it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgeslim.data import fashion_mnist_loader
from edgeslim.errors import ConfigError
from edgeslim.train import Callback, CosineLR, EmptyLoaderError, LoopState, OnStep, evaluate, train_loop


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_loss_falls_and_accuracy_rises_on_real_fashion_mnist() -> None:
    train = fashion_mnist_loader("train", limit=1920, batch_size=64, seed=0)  # 30 batches
    test = fashion_mnist_loader("test", limit=500, batch_size=250)
    net = small_cnn()
    before = evaluate(net, test)
    losses: list[float] = []
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    result = train_loop(net, train, steps=45, optimizer=opt, callbacks=[OnStep(lambda s, t, v: losses.append(v))])
    assert result.steps == 45 and len(losses) == 45  # 1.5 passes: the loader is cycled
    assert result.mean_loss == pytest.approx(sum(losses) / 45)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 2.0 and last < first - 0.6, (first, last)  # cross-entropy of 10 classes starts near ln 10
    assert evaluate(net, test) > before + 0.1  # 11.0 % -> 27.4 % here after 45 small steps
    assert result.world_size == 1 and len(result.weights_sha256) == 64


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def batch_start(self, state: LoopState) -> None:
        self.events.append(("batch_start", state.step))

    def after_backward(self, state: LoopState) -> None:
        grad = state.model[0].weight.grad
        assert grad is not None and float(grad.abs().sum()) > 0
        self.events.append(("after_backward", state.step))

    def step_end(self, state: LoopState) -> None:
        self.events.append(("step_end", state.step))


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3])) for _ in range(n)]


def test_hooks_run_in_order_once_per_step() -> None:
    net, rec = small_cnn(), Recorder()
    train_loop(net, _batches(2), steps=3, optimizer=torch.optim.SGD(net.parameters(), lr=0.01), callbacks=[rec])
    assert rec.events == [
        ("batch_start", 0), ("after_backward", 0), ("step_end", 1),
        ("batch_start", 1), ("after_backward", 1), ("step_end", 2),
        ("batch_start", 2), ("after_backward", 2), ("step_end", 3)]


class FreezeFirstConv(Callback):
    """A gradient hook: zero the first convolution's gradient, so SGD (no decay, no momentum) leaves it alone."""

    def after_backward(self, state: LoopState) -> None:
        grad = state.model[0].weight.grad
        assert grad is not None
        grad.zero_()


def test_a_gradient_hook_controls_the_update() -> None:
    net = small_cnn()
    w0, fc0 = net[0].weight.detach().clone(), net[8].weight.detach().clone()
    train_loop(net, _batches(2), steps=4, optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
               callbacks=[FreezeFirstConv()])
    assert torch.equal(net[0].weight, w0)
    assert not torch.equal(net[8].weight, fc0)


def test_cosine_lr_sets_every_step() -> None:
    net = small_cnn()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    seen: list[float] = []

    class Peek(Callback):
        def after_backward(self, state: LoopState) -> None:
            seen.append(state.optimizer.param_groups[0]["lr"])

    train_loop(net, _batches(1), steps=4, optimizer=opt, callbacks=[CosineLR(0.2), Peek()])
    assert seen == pytest.approx([0.2, 0.2 * (1 + 0.5 ** 0.5) / 2, 0.1, 0.2 * (1 - 0.5 ** 0.5) / 2])


def test_teacher_distils_and_is_left_in_eval_mode() -> None:
    net, teacher = small_cnn(), small_cnn().train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    from edgeslim.train import Objective

    train_loop(net, _batches(1), steps=1, optimizer=opt, teacher=teacher, objective=Objective(0.0, 0.5, 4.0))
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())


def test_bad_steps_and_empty_loader_named() -> None:
    net = small_cnn()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with pytest.raises(ConfigError) as info:
        train_loop(net, _batches(1), steps=0, optimizer=opt)
    assert str(info.value) == "train: steps must be >= 1, got 0"
    with pytest.raises(EmptyLoaderError) as empty:
        train_loop(net, [], steps=1, optimizer=opt)
    assert str(empty.value) == "train: the training loader (list) yielded no batches; give it at least one (images, labels) batch"


def test_train_qat_is_the_loop_with_qat_callbacks(train_loader_small: torch.utils.data.DataLoader) -> None:
    """``train_qat`` = ``train_loop`` + cosine LR + the QAT schedule + distillation at alpha 0.5: same weights."""
    from edgeslim.plugin.quantization import prepare_qat
    from edgeslim.plugin.quantization.qat import qat_callbacks, train_qat
    from edgeslim.train import Objective

    batches = [(x[:32], y[:32]) for (x, y), _ in zip(train_loader_small, range(3), strict=False)]
    base = small_cnn().eval()
    x = torch.zeros(2, 3, 32, 32)
    a, b = prepare_qat(copy.deepcopy(base), x, "int8"), prepare_qat(copy.deepcopy(base), x, "int8")
    loss = train_qat(a, batches, steps=4, lr=0.01, teacher=base, cosine=True)
    opt = torch.optim.SGD([p for p in b.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    done = train_loop(b, batches, steps=4, optimizer=opt, objective=Objective(0.0, 0.5, 4.0), teacher=base,
                      callbacks=[CosineLR(0.01), *qat_callbacks(4)])
    assert loss == pytest.approx(done.mean_loss, rel=1e-6)
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(ta, tb, atol=1e-6), name


@pytest.mark.gpu
def test_finetune_on_cuda_returns_the_model_on_the_cpu() -> None:
    from edgeslim.plugin.pruning.finetune import finetune

    net = small_cnn()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(32, 3, 8, 8),
                                                                        torch.randint(0, 10, (32,))), batch_size=8)
    finetune(net, loader, epochs=1, device="cuda")
    assert {p.device.type for p in net.parameters()} == {"cpu"}
    assert evaluate(net, loader, device="cuda") >= 0.0 and next(net.parameters()).device.type == "cpu"
