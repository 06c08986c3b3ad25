"""Reference models and torchvision architectures by name.

``load("resnet18-fmnist")``, ``load("mobilenet_v2-fmnist")`` and ``load("vit-fmnist")`` return the
trained Fashion-MNIST checkpoints shipped in this package (sha256-checked, loaded with
``weights_only=True``). Any torchvision classification model name (``"resnet50"``,
``"densenet121"`` ...) returns that architecture with random weights — for size and latency
only, never for accuracy. ``load("path/to/file.py:build", weights="w.pt")`` (or
``"package.module:build"``) calls your own factory (:mod:`edgeslim.models.user`).
"""

from __future__ import annotations

import copy
import hashlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeslim.config import from_data, serializable, to_data
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
    kwargs: dict[str, Any] = field(default_factory=dict)


REFERENCES: dict[str, Reference] = {
    "resnet18-fmnist": Reference(
        "resnet18", "resnet18_fmnist.pt",
        "ef6269bb94a9469229e26b93cedd3e2f6b262eb17b56f99d203ae43f2fa20b18", 10, 0.9258,
    ),
    "mobilenet_v2-fmnist": Reference(
        "mobilenet_v2", "mobilenet_v2_fmnist.pt",
        "bb604f429f15162d6776b215150e64b2d2e5fdf05a29d56cb740a39e70020016", 10, 0.9235,
    ),
    # torchvision's VisionTransformer at 32x32 (patch 4: 64 tokens + class token; fixed input size)
    "vit-fmnist": Reference(
        "VisionTransformer", "vit_fmnist.pt",
        "dd96aa4ab8bc638994cfc52ae8b6582295fa7f77c5862b230a47aa13f3a55c66", 10, 0.8880,
        kwargs={"image_size": 32, "patch_size": 4, "num_layers": 6, "num_heads": 6, "hidden_dim": 192, "mlp_dim": 384},
    ),
}


def _vision_transformer(**kwargs: Any) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(**kwargs)


#: Architectures built from a torchvision class with explicit sizes (not a registered model name).
CLASS_BUILDERS: dict[str, Callable[..., nn.Module]] = {"VisionTransformer": _vision_transformer}


@serializable(strict=False)
@dataclass(frozen=True)
class ArchInfo:
    """The torchvision architecture (name and constructor kwargs) that rebuilds a model unpruned."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "kwargs"}``, as stored in a saved file's manifest (untagged)."""
        data: dict[str, Any] = to_data(self, tagged=False)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchInfo:
        """Inverse of :meth:`to_dict`."""
        return from_data(data, cls)


#: Side table: the architecture each model built or loaded by edgeslim descends from. Kept beside
#: the modules (never as an attribute on them); whoever copies a model carries the entry over
#: with :func:`copy_arch`.
_ARCHS: weakref.WeakKeyDictionary[nn.Module, ArchInfo] = weakref.WeakKeyDictionary()


def remember_arch(model: nn.Module, info: ArchInfo | None) -> nn.Module:
    """Record that ``model`` is (a pruned) ``info`` architecture; ``None`` forgets it. Returns ``model``."""
    if info is None:
        _ARCHS.pop(model, None)
    else:
        _ARCHS[model] = info
    return model


def arch_of_module(model: nn.Module) -> ArchInfo | None:
    """The architecture ``model`` was built as by edgeslim (``None``: unknown, e.g. your own class)."""
    return _ARCHS.get(model)


def copy_arch(src: nn.Module, dst: nn.Module) -> nn.Module:
    """Give ``dst`` (a copy of ``src``) the architecture entry of ``src``, if it has one. Returns ``dst``."""
    info = _ARCHS.get(src)
    if info is not None:
        _ARCHS[dst] = info
    return dst


def clone(model: nn.Module, *, share: bool = False) -> nn.Module:
    """A deep copy of ``model`` (with its architecture entry), even when a forward run with autograd on left
    non-leaf tensors in module attributes (caches such as timm LeViT's attention-bias table, which
    ``copy.deepcopy`` refuses): those are copied detached. ``model`` itself is not modified.

    Args:
        model: The model to copy.
        share: Copy the modules only: the copy's parameters and buffers are new tensors on the same storage
            (no weight copied). For a copy whose tensors are only read or replaced, never changed in place.
    """
    memo: dict[int, Any] = {}
    for mod in model.modules():
        _detached_into(memo, [v for k, v in vars(mod).items() if k not in ("_parameters", "_modules")], 0)
    if share:
        for p in model.parameters():
            memo.setdefault(id(p), nn.Parameter(p.detach(), requires_grad=p.requires_grad))
        for b in model.buffers():
            memo.setdefault(id(b), b.detach())
    return copy_arch(model, copy.deepcopy(model, memo))


def _detached_into(memo: dict[int, Any], value: Any, depth: int) -> None:
    """Map every non-leaf tensor in ``value`` (dicts, lists and tuples, a few levels deep) to a detached copy."""
    if isinstance(value, torch.Tensor):
        if not value.is_leaf and id(value) not in memo:
            memo[id(value)] = value.detach().clone()
    elif depth < 4 and isinstance(value, dict):
        for v in value.values():
            _detached_into(memo, v, depth + 1)
    elif depth < 4 and isinstance(value, list | tuple | set):
        for v in value:
            _detached_into(memo, v, depth + 1)


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
    """Build an architecture with random weights: a torchvision classification model name, a
    torchvision class of :data:`CLASS_BUILDERS` (with its sizes in ``kwargs``), or a user factory
    ``/abs/file.py:build`` / ``package.module:build`` (called again; see :mod:`edgeslim.models.user`).

    Raises:
        ModelLoadError: ``arch`` is none of these, or the user factory cannot be called.
    """
    import torchvision

    from edgeslim.models.user import is_user_spec, rebuild

    if arch in CLASS_BUILDERS:
        return CLASS_BUILDERS[arch](**kwargs)
    if is_user_spec(arch):
        return rebuild(arch)
    names = torchvision_names()
    if arch not in names:
        raise ModelLoadError(
            f"unknown model {arch!r}: use one of {', '.join(REFERENCES)} (trained) or a "
            f"torchvision classification model such as resnet18, mobilenet_v2, densenet121, or your own "
            "factory as path/to/file.py:function or package.module:function"
        )
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def arch_of(name: str) -> tuple[str, dict[str, Any]]:
    """The ``(torchvision arch, kwargs)`` that :func:`load` builds for ``name``."""
    if name in REFERENCES:
        ref = REFERENCES[name]
        return ref.arch, {**ref.kwargs, "num_classes": ref.num_classes}
    return name, {}


def load(
    name: str, *, num_classes: int | None = None, verify: bool = True, weights: str | Path | None = None
) -> nn.Module:
    """Return a model by name, in eval mode.

    Args:
        name: ``"resnet18-fmnist"``, ``"mobilenet_v2-fmnist"``, ``"vit-fmnist"`` (trained), a
            torchvision classification model name (random init), or your factory
            ``path/to/file.py:build`` / ``package.module:build``.
        num_classes: Classes of a random-init torchvision model (default: torchvision's).
        verify: Check the sha256 of a reference checkpoint before loading it.
        weights: A ``state_dict`` file loaded (``weights_only=True``, strictly) into a torchvision
            architecture or your factory's model.

    Raises:
        ModelLoadError: Unknown name, missing or corrupt checkpoint, weights that do not match.
    """
    from edgeslim.models.user import is_user_spec, load_user, load_weights

    if name in REFERENCES and weights is not None:
        raise ModelLoadError(f"{name} is a trained reference model: --weights applies to a torchvision architecture "
                             "or your own factory (path/to/file.py:build)")
    if is_user_spec(name):
        model, origin = load_user(name, weights)
        remember_arch(model, ArchInfo(str(origin["source"])))
        return model
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
        arch, arch_kwargs = arch_of(name)
        model = build_arch(arch, **arch_kwargs)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        remember_arch(model, ArchInfo(arch, arch_kwargs))
        return model.eval()
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    model = build_arch(name, **kwargs)
    if weights is not None:
        load_weights(model, weights, source=f"torchvision's {name}({', '.join(f'{k}={v}' for k, v in kwargs.items())})")
    remember_arch(model, ArchInfo(name, kwargs))
    return model.eval()


__all__ = [
    "CLASS_BUILDERS",
    "REFERENCES",
    "ArchInfo",
    "Reference",
    "arch_of",
    "arch_of_module",
    "build_arch",
    "copy_arch",
    "load",
    "remember_arch",
    "torchvision_names",
]
