"""Safe saving and loading of edgeslim models (``torch.load(..., weights_only=True)`` only).

A saved file is a plain dict of tensors and primitives — never a pickled class::

    {"edgeslim_format": 1, "kind": "pruned", "meta": {...}, ...kind-specific payload...}

Each kind of model (pruned, quantized, ...) registers a :class:`ModelFormat` under its
name with :data:`FORMATS`; :func:`load` reads the header and dispatches to it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from edgeslim.errors import ModelLoadError
from edgeslim.registry import Registry

FORMAT_VERSION = 1


class ModelFormat(Protocol):
    """How one kind of edgeslim model is turned into a safe payload and back."""

    def dump(self, model: nn.Module) -> dict[str, Any]:
        """Return the kind-specific payload (tensors, lists, dicts, str, numbers only)."""
        ...

    def restore(self, payload: dict[str, Any], base: nn.Module | None) -> nn.Module:
        """Rebuild the model from the payload (``base``: an instance of the unpruned architecture)."""
        ...


FORMATS: Registry[ModelFormat] = Registry("saved-model format")


def _register_builtin_formats() -> None:
    """Import the modules that register edgeslim's own formats ("pruned", "quantized")."""
    import edgeslim.plugin.pruning.io
    import edgeslim.plugin.quantization.io  # noqa: F401


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename it into place."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def save(model: nn.Module, path: str | Path, *, kind: str | None = None, meta: dict[str, Any] | None = None) -> Path:
    """Save ``model`` safely (reloadable with ``weights_only=True``).

    Args:
        model: The model (pruned, quantized ...).
        path: Destination file (``.pt`` recommended); written atomically.
        kind: Registered format name; default ``getattr(model, "edgeslim_kind", "pruned")``.
        meta: Extra JSON-able information stored in the header (metrics, config ...).

    Returns:
        The path written.
    """
    _register_builtin_formats()
    kind = str(kind or getattr(model, "edgeslim_kind", "pruned"))
    payload = FORMATS.get(kind).dump(model)
    obj = {"edgeslim_format": FORMAT_VERSION, "kind": kind, "meta": dict(meta or {}), **payload}
    return atomic_torch_save(obj, path)


def read_header(path: str | Path) -> dict[str, Any]:
    """Load the raw dict of an edgeslim file (``weights_only=True``), checking the header."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"model file {p} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"{p} is not a safe edgeslim/torch file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "edgeslim loads only weights_only=True files — re-save the model with edgeslim.save()"
        ) from exc
    return obj if isinstance(obj, dict) else {"_raw": obj}


def load(path: str | Path, *, base: nn.Module | None = None) -> nn.Module:
    """Load a model saved by :func:`save` (always ``weights_only=True``).

    A plain ``state_dict`` file is accepted too when ``base`` (the architecture) is given.

    Args:
        path: The file.
        base: An instance of the original (unpruned) architecture, needed for models whose
            architecture edgeslim cannot rebuild by name (your own classes).

    Raises:
        ModelLoadError: Missing, corrupt or unknown file, or no architecture to rebuild.
    """
    _register_builtin_formats()
    obj = read_header(path)
    if "edgeslim_format" not in obj:
        if base is not None and all(isinstance(v, torch.Tensor) for v in obj.values()):
            base.load_state_dict(obj)
            return base.eval()
        raise ModelLoadError(
            f"{path} is not an edgeslim model file (no 'edgeslim_format' key); pass base=<your model> "
            "to load a plain state_dict"
        )
    if int(obj["edgeslim_format"]) > FORMAT_VERSION:
        raise ModelLoadError(f"{path} was written by a newer edgeslim (format {obj['edgeslim_format']}); upgrade")
    model = FORMATS.get(str(obj["kind"])).restore(obj, base)
    model.edgeslim_meta = obj.get("meta", {})
    return model.eval()
