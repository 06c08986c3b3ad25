"""Torch-Pruning's escape hatches for unusual models, as config values that survive JSON/YAML.

``forward_fn``, ``output_transform`` and ``customized_pruners`` hold Python objects. In a config file
(or recipe) they are written as import paths ``"package.module:name"``; :func:`resolve` imports them,
:func:`path_of` writes them back. A lambda or a local function has no import path: ``to_dict`` drops it
and says so under ``_dropped``.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgeslim.errors import ConfigError


def resolve(value: Any, what: str) -> Any:
    """``value`` itself, or the object an import path ``"package.module:name"`` names.

    Raises:
        ConfigError: The path is malformed or names nothing importable.
    """
    if not isinstance(value, str):
        return value
    mod, sep, attr = value.partition(":")
    if not sep or not mod or not attr:
        raise ConfigError(f"prune config {what}: {value!r} is not an import path 'package.module:name'")
    try:
        obj: Any = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"prune config {what}: cannot import {value!r} ({exc}); give an importable "
                          "'package.module:name' or pass the object itself in Python") from None
    return obj


def path_of(obj: Any) -> str | None:
    """The import path ``"module:qualname"`` of a function or class, ``None`` when it has none (lambda, local)."""
    target = obj if isinstance(obj, type) or (callable(obj) and hasattr(obj, "__qualname__")) else type(obj)
    mod, qual = getattr(target, "__module__", None), getattr(target, "__qualname__", "")
    if not mod or not qual or "<" in qual:
        return None
    return f"{mod}:{qual}"


def pruner_instance(value: Any, what: str) -> Any:
    """A torch-pruning pruning function object from an instance, a class or an import path of either."""
    obj = resolve(value, what)
    return obj() if isinstance(obj, type) else obj
