"""The third reference model, ``vit-fmnist`` (torchvision VisionTransformer at 32x32)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from edgeslim import models
from edgeslim.data import evaluate, fashion_mnist_loader
from edgeslim.errors import ModelLoadError

#: The README's figure (fp32, full 10k test set) and the tolerance allowed on a 2,000-image slice
#: (binomial standard error ~0.7 pt there; 2.5 pt is over three of them).
README_TOP1 = 0.8880
TOLERANCE = 0.025


def test_vit_fmnist_is_shipped_and_sha256_checked() -> None:
    ref = models.REFERENCES["vit-fmnist"]
    path = models.CHECKPOINT_DIR / ref.file
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ref.sha256
    assert path.stat().st_size == 7_257_077


def test_vit_fmnist_loads_and_matches_readme_top1() -> None:
    m = models.load("vit-fmnist")
    assert sum(p.numel() for p in m.parameters()) == 1_806_538
    info = models.arch_of_module(m)
    assert info is not None and info.name == "VisionTransformer" and info.kwargs["hidden_dim"] == 192
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    top1 = evaluate(m, fashion_mnist_loader("test", limit=2000, batch_size=500))
    assert abs(top1 - README_TOP1) <= TOLERANCE, f"vit-fmnist top-1 {top1:.4f} on 2,000 test images vs README 0.8880"
    assert models.REFERENCES["vit-fmnist"].top1_fp32 == README_TOP1


def test_vit_fmnist_corrupt_checkpoint_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray((models.CHECKPOINT_DIR / "vit_fmnist.pt").read_bytes())
    data[5000] ^= 0xFF
    (tmp_path / "vit_fmnist.pt").write_bytes(bytes(data))
    monkeypatch.setattr(models, "CHECKPOINT_DIR", tmp_path)
    with pytest.raises(ModelLoadError, match=r"vit_fmnist\.pt is corrupt: sha256"):
        models.load("vit-fmnist")


def test_vit_fmnist_rebuilds_from_its_recorded_arch() -> None:
    arch, kwargs = models.arch_of("vit-fmnist")
    rebuilt = models.build_arch(arch, **kwargs)
    assert set(rebuilt.state_dict()) == set(models.load("vit-fmnist").state_dict())
