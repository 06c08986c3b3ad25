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

FORMAT_VERSION = 2  # 2: quantized files store integer weights, not the float state_dict


class ModelFormat(Protocol):
    """How one kind of edgeslim model is turned into a safe payload and back."""

    def claims(self, obj: Any) -> bool:
        """Whether ``obj`` (a model or a result object) is saved in this format by default."""
        ...

    def dump(self, model: Any, *, keep_float: bool = False) -> dict[str, Any]:
        """Return the kind-specific payload (tensors, lists, dicts, str, numbers only).

        ``model``: a module or a result object (``PruneResult``, ``QuantResult``); the metadata
        to store comes from the result or from the plugin's own records, never from module
        attributes. ``keep_float``: also store the float weights a quantized model descends from.
        """
        ...

    def restore(self, payload: dict[str, Any], base: nn.Module | None) -> nn.Module:
        """Rebuild the model from the payload (``base``: an instance of the unpruned architecture)."""
        ...


#: Formats register themselves when their module is imported (``edgeslim.plugin.pruning.io``,
#: ``edgeslim.plugin.quantization.io``); in a fresh process the ``edgeslim.plugins`` entry points
#: (declared in edgeslim's own pyproject) import them on the first lookup. Nothing is imported back.
FORMATS: Registry[ModelFormat] = Registry("saved-model format")


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


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """A sha256 over a state_dict's names, shapes, dtypes and bytes (the float ancestor's identity)."""
    import hashlib

    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).clone().numpy().tobytes() if t.numel() else b"")  # a copy: numpy() pins the storage (a QAT fake-quant can no longer resize its buffers)
    return h.hexdigest()


def _kind_of(model: Any) -> str:
    """The first registered format that claims ``model``, else ``pruned``.

    Only the formats already imported are asked: an object a plugin made (a ``QuantResult``,
    a converted graph) means that plugin, and its format, are loaded.
    """
    for name, fmt in FORMATS.loaded().items():
        if name != "pruned" and fmt.claims(model):
            return name
    return "pruned"


def save(
    model: Any,
    path: str | Path,
    *,
    kind: str | None = None,
    meta: dict[str, Any] | None = None,
    keep_float: bool = False,
) -> Path:
    """Save ``model`` safely (reloadable with ``weights_only=True``).

    Args:
        model: The model (float or pruned ``nn.Module``), the ``PruneResult`` of
            ``edgeslim.prune`` (its model and masks), or the ``QuantResult`` of
            ``edgeslim.quantize`` / ``convert`` (its converted graph is saved with integer
            weights, and its report).
        path: Destination file (``.pt`` recommended); written atomically.
        kind: Registered format name; default: the format that claims ``model``
            (``quantized`` for a ``QuantResult`` or a graph edgeslim converted), else ``pruned``.
        meta: Extra JSON-able information stored in the header (metrics, lineage ...).
        keep_float: Quantized models: also store the float weights they descend from
            (by default only integer weights, scales and the structure are stored).

    Returns:
        The path written.
    """
    kind = str(kind or _kind_of(model))
    payload = FORMATS.get(kind).dump(model, keep_float=keep_float)
    obj = {"edgeslim_format": FORMAT_VERSION, "kind": kind, "meta": dict(meta or {}), **payload}
    return atomic_torch_save(obj, path)


def safe_torch_load(path: str | Path, *, what: str, refused: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors.

    Args:
        path: The file.
        what: What the file is, for the missing-file message (``"model file"``, ``"weights file"``).
        refused: The message when the file does not load, after ``{path}`` and the cause: what it is
            not and what to do.

    Raises:
        ModelLoadError: Missing, unsafe or corrupt file.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{what} {p} does not exist")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        cause = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        raise ModelLoadError(refused.format(path=p, cause=cause)) from exc


def read_header(path: str | Path) -> dict[str, Any]:
    """Load the raw dict of an edgeslim file (``weights_only=True``), checking the header."""
    obj = safe_torch_load(path, what="model file", refused=(
        "{path} is not a safe edgeslim/torch file ({cause}); "
        "edgeslim loads only weights_only=True files — re-save the model with edgeslim.save()"))
    return obj if isinstance(obj, dict) else {"_raw": obj}


def load_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` dict given to :func:`save` (``{}`` if none), read from the file's header.

    Raises:
        ModelLoadError: Missing or corrupt file.
    """
    meta = read_header(path).get("meta", {})
    return dict(meta) if isinstance(meta, dict) else {}


def load(path: str | Path, *, base: nn.Module | None = None) -> nn.Module:
    """Load a model saved by :func:`save` (always ``weights_only=True``).

    A plain ``state_dict`` file is accepted too when ``base`` (the architecture) is given.
    The ``meta`` stored with the model is read with :func:`load_meta` (or ``read_header``).

    Args:
        path: The file.
        base: An instance of the original (unpruned) architecture, needed for models whose
            architecture edgeslim cannot rebuild: your own classes, unless the file was made from
            ``--model FILE.py:factory`` / ``package.module:factory`` and that code is still there.

    Raises:
        ModelLoadError: Missing, corrupt or unknown file, or no architecture to rebuild.
    """
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
    return FORMATS.get(str(obj["kind"])).restore(obj, base).eval()
