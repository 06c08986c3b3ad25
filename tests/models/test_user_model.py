"""Your own model: ``path/to/file.py:factory`` / ``package.module:factory`` with ``--weights``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import edgeslim
from edgeslim import io as es_io
from edgeslim import models
from edgeslim.errors import ModelLoadError
from edgeslim.models.user import load_user

MODEL_PY = """
import torch
from torch import nn


class Small(nn.Module):
    def __init__(self, classes=3, width=16):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 32, 3, padding=1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


def build():
    return Small()


def build_wide():
    return Small(width=24)


def build_other():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def broken():
    raise RuntimeError("no GPU here")


def not_a_model():
    return 42
"""


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "user_net.py"
    path.write_text(MODEL_PY)
    return path


@pytest.fixture
def weights(user_file: Path, tmp_path: Path) -> Path:
    net, _ = load_user(f"{user_file}:build")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    dest = tmp_path / "w.pt"
    torch.save(net.state_dict(), dest)
    return dest


def test_file_factory_with_weights_records_origin(user_file: Path, weights: Path) -> None:
    net, origin = load_user(f"{user_file}:build", weights)
    expected = torch.load(weights, weights_only=True)
    assert torch.equal(net.state_dict()["conv.weight"], expected["conv.weight"])
    assert not net.training
    assert origin["source"] == f"{user_file.resolve()}:build"
    assert origin["file"] == str(user_file.resolve()) and origin["factory"] == "build"
    import hashlib

    assert origin["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert origin["file_sha256"] == hashlib.sha256(user_file.read_bytes()).hexdigest()


def test_module_factory(user_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(user_file.parent))
    net = models.load("user_net:build")
    assert net(torch.zeros(1, 3, 8, 8)).shape == (1, 3)
    info = models.arch_of_module(net)
    assert info is not None and info.name == "user_net:build"


def test_wrapped_checkpoint_is_unwrapped(user_file: Path, weights: Path, tmp_path: Path) -> None:
    wrapped = tmp_path / "ckpt.pt"
    torch.save({"state_dict": torch.load(weights, weights_only=True), "epoch": 3}, wrapped)
    net = models.load(f"{user_file}:build", weights=wrapped)
    assert torch.equal(net.state_dict()["fc.bias"], torch.load(weights, weights_only=True)["fc.bias"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.py:build", r"missing\.py does not exist"),
        ("{file}:nope", r"user_net\.py has no 'nope'; callables defined there: .*broken, build"),
        ("{file}:broken", r"user_net\.py:broken\(\) raised RuntimeError: no GPU here"),
        ("{file}:not_a_model", r"not_a_model\(\) returned a int, not a torch\.nn\.Module"),
        ("no_such_pkg_xyz.mod:build", r"module 'no_such_pkg_xyz\.mod' not found"),
    ],
)
def test_factory_errors_name_the_file(user_file: Path, spec: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        models.load(spec.format(file=user_file))


def test_weights_mismatch_names_keys(user_file: Path, weights: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ModelLoadError,
        match=r"w\.pt do not match .*shape mismatch at conv\.weight \(16, 3, 3, 3\) in the "
        r"file vs \(24, 3, 3, 3\)",
    ):
        models.load(f"{user_file}:build_wide", weights=weights)
    with pytest.raises(ModelLoadError, match=r"missing keys 1\.weight, 1\.bias; unexpected keys conv\.weight"):
        models.load(f"{user_file}:build_other", weights=weights)
    ddp = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in torch.load(weights, weights_only=True).items()}, ddp)
    with pytest.raises(ModelLoadError, match="strip that DistributedDataParallel prefix"):
        models.load(f"{user_file}:build", weights=ddp)


def test_weights_unsafe_or_missing(user_file: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "whole.pt"
    net, _ = load_user(f"{user_file}:build")
    torch.save(net, pickled)  # a pickled module, not a state_dict
    with pytest.raises(
        ModelLoadError, match=r"whole\.pt cannot be loaded with weights_only=True .*model\.state_dict\(\)"
    ):
        models.load(f"{user_file}:build", weights=pickled)
    with pytest.raises(ModelLoadError, match=r"weights file .*nothing\.pt does not exist"):
        models.load(f"{user_file}:build", weights=tmp_path / "nothing.pt")
    with pytest.raises(ModelLoadError, match="trained reference model: --weights applies"):
        models.load("resnet18-fmnist", weights=tmp_path / "nothing.pt")


def test_pruned_user_model_saves_and_reloads_by_its_factory(user_file: Path, weights: Path, tmp_path: Path) -> None:
    net = models.load(f"{user_file}:build", weights=weights)
    x = torch.randn(2, 3, 16, 16)
    result = edgeslim.prune(net, x, edgeslim.PruneConfig(criterion="l1", target=edgeslim.Target.parse("ratio=0.5")))
    assert result.model.conv.out_channels == 8
    dest = es_io.save(result.model, tmp_path / "pruned.pt")
    reloaded = es_io.load(dest)
    assert reloaded.conv.out_channels == 8
    torch.testing.assert_close(reloaded(x), result.model.eval()(x))
    user_file.rename(tmp_path / "moved.py")  # the factory is gone: a clear error, not a traceback
    with pytest.raises(
        ModelLoadError,
        match=re.escape(f"built by your factory {user_file.resolve()}:build")
        + r".*Put the file back .*base=<an unpruned instance of your model>",
    ):
        es_io.load(dest)
