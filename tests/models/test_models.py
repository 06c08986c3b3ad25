from pathlib import Path

import pytest
import torch

from edgeslim import models
from edgeslim.errors import ModelLoadError


def test_reference_checkpoints_load_and_record_arch() -> None:
    m = models.load("mobilenet_v2-fmnist")
    info = models.arch_of_module(m)
    assert info is not None and info.to_dict() == {"name": "mobilenet_v2", "kwargs": {"num_classes": 10}}
    assert sum(p.numel() for p in m.parameters()) == 2_236_682
    assert not m.training


def test_torchvision_name_random_init() -> None:
    m = models.load("resnet18")
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_unknown_name() -> None:
    with pytest.raises(ModelLoadError, match="unknown model 'resnet19'"):
        models.load("resnet19")


def test_corrupt_checkpoint_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = models.CHECKPOINT_DIR / "mobilenet_v2_fmnist.pt"
    bad = tmp_path / "mobilenet_v2_fmnist.pt"
    data = bytearray(src.read_bytes())
    data[1000] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(models, "CHECKPOINT_DIR", tmp_path)
    with pytest.raises(ModelLoadError, match="corrupt: sha256"):
        models.load("mobilenet_v2-fmnist")
