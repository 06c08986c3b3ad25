"""Your own model: ``--model path/to/file.py:factory`` or ``package.module:factory`` (+ ``--weights W.pt``).

The factory is called without arguments and returns an ``nn.Module``; the weights are a
``state_dict`` loaded with ``torch.load(..., weights_only=True)``. The model's architecture is
recorded as the spec with an absolute path (``/abs/file.py:build``), so that a pruned or
quantized file saved from it is rebuilt by calling the same factory again (the file must still be
there); its lineage records the file, the factory and the sha256 of the weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeslim.errors import ModelLoadError
from edgeslim.user_code import CallableSpec, UserCodeError, call, looks_like_spec, parse_spec

#: Wrapper keys of training checkpoints whose value is the state_dict.
_WRAPPERS = ("state_dict", "model_state_dict", "model")
_SHOWN = 5


def is_user_spec(text: str) -> bool:
    """Whether ``text`` names a user factory (``FILE.py:name`` / ``package.module:name``)."""
    return looks_like_spec(text)


def build_user(text: str) -> tuple[nn.Module, CallableSpec]:
    """Call the factory named by ``text`` and check that it returned an ``nn.Module``.

    Raises:
        ModelLoadError: Missing file or module, no such factory, the factory raised or returned
            something else than a module.
    """
    try:
        spec = parse_spec(text, what="--model")
        model = call(spec)
    except UserCodeError as exc:
        raise ModelLoadError(str(exc)) from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"{spec}() returned a {type(model).__name__}, not a torch.nn.Module: make it return the model"
        )
    return model, spec


def _short(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``state_dict`` from ``path`` (``weights_only=True``); ``{"state_dict": ...}`` wrappers are unwrapped.

    Raises:
        ModelLoadError: Missing file, unsafe or corrupt file, not a dict of tensors.
    """
    from edgeslim.io import safe_torch_load

    p = Path(path)
    obj = safe_torch_load(p, what="weights file", refused=(
        "{path} cannot be loaded with weights_only=True ({cause}); "
        "save the weights with torch.save(model.state_dict(), path), not the whole model"))
    if isinstance(obj, dict):
        for key in _WRAPPERS:
            if isinstance(obj.get(key), dict) and not isinstance(obj.get(key), torch.Tensor):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        what = type(obj).__name__ if not isinstance(obj, dict) else f"a dict with keys {_short([str(k) for k in obj])}"
        raise ModelLoadError(f"{p} is {what}, not a state_dict (a dict of tensors): save model.state_dict()")
    return {str(k): v for k, v in obj.items()}


def load_weights(model: nn.Module, path: str | Path, *, source: str = "the model") -> None:
    """Load the state_dict in ``path`` into ``model``, strictly.

    Raises:
        ModelLoadError: Keys missing or unexpected, or shapes different: the message names the file,
            the first keys and what to do.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        hint = ""
        if all(k.startswith("module.") for k in unexpected) and unexpected:
            hint = " (the keys start with 'module.': strip that DistributedDataParallel prefix before saving)"
        parts = ([f"missing keys {_short(missing)}"] if missing else []) + (
            [f"unexpected keys {_short(unexpected)}"] if unexpected else []
        )
        raise ModelLoadError(
            f"weights {path} do not match {source}: {'; '.join(parts)}{hint}. The factory must build the same "
            "architecture the weights were saved from"
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)} in the model"
        for k in own
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if wrong:
        raise ModelLoadError(
            f"weights {path} do not match {source}: shape mismatch at {_short(wrong)}. Build the model with the "
            "sizes the weights were trained with (number of classes, widths ...)"
        )
    model.load_state_dict(state, strict=True)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_user(text: str, weights: str | Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build a user model (and load its weights) in eval mode; return it with its lineage record.

    Args:
        text: ``path/to/file.py:factory`` or ``package.module:factory``.
        weights: A ``state_dict`` file (``None``: the factory's own weights).

    Returns:
        ``(model, origin)``: ``origin`` has ``source`` (the absolute spec, also the architecture
        recorded for saved files), ``file``/``module``, ``factory``, ``file_sha256`` and, with
        weights, ``weights`` and ``weights_sha256``.

    Raises:
        ModelLoadError: See :func:`build_user` and :func:`load_weights`.
    """
    model, spec = build_user(text)
    origin: dict[str, Any] = {"source": str(spec), "factory": spec.name, "file_sha256": spec.file_sha256()}
    origin.update({"file": str(spec.file)} if spec.file is not None else {"module": spec.module})
    if weights is not None:
        load_weights(model, weights, source=f"the model {spec}() built")
        origin.update(weights=str(Path(weights).resolve()), weights_sha256=file_sha256(weights))
    return model.eval(), origin


def rebuild(text: str) -> nn.Module:
    """Rebuild the unpruned architecture recorded in a saved file (its factory called again).

    Raises:
        ModelLoadError: The factory cannot be called any more; the message says how to load anyway.
    """
    try:
        model, _ = build_user(text)
    except ModelLoadError as exc:
        raise ModelLoadError(
            f"this model was built by your factory {text} (recorded in the saved file), which cannot be called "
            f"now: {exc}. Put the file back (or make the module importable), or load with "
            "edgeslim.load(path, base=<an unpruned instance of your model>)"
        ) from exc
    return model


__all__ = ["build_user", "file_sha256", "is_user_spec", "load_user", "load_weights", "read_state_dict", "rebuild"]
