"""Reference models and torchvision architectures by name.

``load("resnet18-fmnist")`` and ``load("mobilenet_v2-fmnist")`` return the trained
Fashion-MNIST checkpoints shipped in this package (sha256-checked, loaded with
``weights_only=True``). Any torchvision classification model name (``"resnet50"``,
``"densenet121"`` ...) returns that architecture with random weights — for size and latency
only, never for accuracy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeslim.errors import ModelLoadError

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


@dataclass(frozen=True)
class Reference:
    """A trained reference checkpoint shipped with edgeslim."""

    arch: str
    file: str
    sha256: str
    num_classes: int
    top1_fp32: float
    dataset: str = "fashion-mnist"


REFERENCES: dict[str, Reference] = {
    "resnet18-fmnist": Reference(
        "resnet18", "resnet18_fmnist.pt",
        "ef6269bb94a9469229e26b93cedd3e2f6b262eb17b56f99d203ae43f2fa20b18", 10, 0.9258,
    ),
    "mobilenet_v2-fmnist": Reference(
        "mobilenet_v2", "mobilenet_v2_fmnist.pt",
        "bb604f429f15162d6776b215150e64b2d2e5fdf05a29d56cb740a39e70020016", 10, 0.9235,
    ),
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def torchvision_names() -> list[str]:
    """Names of torchvision's classification models."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_arch(arch: str, **kwargs: Any) -> nn.Module:
    """Build a torchvision classification architecture with random weights.

    Raises:
        ModelLoadError: ``arch`` is not a torchvision classification model.
    """
    import torchvision

    names = torchvision_names()
    if arch not in names:
        raise ModelLoadError(
            f"unknown model {arch!r}: use one of {', '.join(REFERENCES)} (trained) or a "
            f"torchvision classification model such as resnet18, mobilenet_v2, densenet121"
        )
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def arch_of(name: str) -> tuple[str, dict[str, Any]]:
    """The ``(torchvision arch, kwargs)`` that :func:`load` builds for ``name``."""
    if name in REFERENCES:
        ref = REFERENCES[name]
        return ref.arch, {"num_classes": ref.num_classes}
    return name, {}


def load(name: str, *, num_classes: int | None = None, verify: bool = True) -> nn.Module:
    """Return a model by name, in eval mode.

    Args:
        name: ``"resnet18-fmnist"``, ``"mobilenet_v2-fmnist"`` (trained), or a torchvision
            classification model name (random init).
        num_classes: Classes of a random-init torchvision model (default: torchvision's).
        verify: Check the sha256 of a reference checkpoint before loading it.

    Raises:
        ModelLoadError: Unknown name, missing or corrupt checkpoint.
    """
    if name in REFERENCES:
        ref = REFERENCES[name]
        path = CHECKPOINT_DIR / ref.file
        if not path.is_file():
            raise ModelLoadError(f"reference checkpoint {path} is missing: reinstall edgeslim from a full clone")
        if verify and (digest := _sha256(path)) != ref.sha256:
            raise ModelLoadError(
                f"reference checkpoint {path} is corrupt: sha256 {digest}, expected {ref.sha256}; "
                "restore it with `git checkout -- " + str(path) + "`"
            )
        model = build_arch(ref.arch, num_classes=ref.num_classes)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.edgeslim_arch = {"name": ref.arch, "kwargs": {"num_classes": ref.num_classes}}  # type: ignore[assignment]
        return model.eval()
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    model = build_arch(name, **kwargs)
    model.edgeslim_arch = {"name": name, "kwargs": kwargs}  # type: ignore[assignment]
    return model.eval()


__all__ = ["REFERENCES", "Reference", "arch_of", "build_arch", "load", "torchvision_names"]
