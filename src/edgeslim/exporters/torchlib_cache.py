"""One list of torchlib's ONNX functions per process, instead of one per ``torch.onnx.export``.

``torch.onnx.export(..., dynamo=True)`` builds its op registry on every call from onnxscript's
``get_torchlib_ops()``, which reads each of ~500 torchlib functions' domain from its IR, parsing the
function's Python source every time: ~1 s of each export on a 2-core x86 machine, about a third of
exporting a small CNN. The list depends only on onnxscript's torchlib registry, so :func:`install`
wraps the function with a cache keyed by that registry's contents (names and function objects): a
function registered later changes the key and the list is built again. torch builds a fresh registry
from the list on every export, as before; the list's entries are frozen dataclasses.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Hashable
from typing import Any

_ATTR = "get_torchlib_ops"
_cache: dict[str, tuple[Hashable, list[Any]]] = {}


def _registry_key() -> Hashable:
    """What ``get_torchlib_ops`` reads: every qualified name with the identity of each overload."""
    from onnxscript.function_libs.torch_lib import ops  # noqa: F401  (registers torchlib's functions, as the original does)
    from onnxscript.function_libs.torch_lib.registration import default_registry

    return tuple((name, tuple(map(id, funcs.overloads)), tuple(map(id, funcs.complex)))
                 for name, funcs in default_registry.items())


def cached(build: Callable[[], list[Any]]) -> Callable[[], list[Any]]:
    """Wrap onnxscript's ``get_torchlib_ops`` (``build``) with the per-process cache.

    Args:
        build: The function to wrap.

    Returns:
        A function returning a new list of the same entries, built once per registry state.
    """
    if getattr(build, "_edgeslim_cached", False):
        return build

    @functools.wraps(build)
    def wrapper() -> list[Any]:
        key = _registry_key()
        hit = _cache.get("ops")
        if hit is None or hit[0] != key:
            hit = (key, build())
            _cache["ops"] = hit
        return list(hit[1])

    wrapper._edgeslim_cached = True  # type: ignore[attr-defined]
    return wrapper


def install() -> bool:
    """Route the ONNX exporter's torchlib lookup through the cache (idempotent).

    Returns:
        True when installed; False when this torch has no such lookup (export then works as before, uncached).
    """
    try:
        from torch.onnx._internal import _lazy_import

        apis = _lazy_import.onnxscript_apis
        name = getattr(apis, "_name", None)
        module = importlib.import_module(name) if isinstance(name, str) else apis
        original = getattr(module, _ATTR)
    except (ImportError, AttributeError):
        return False
    setattr(module, _ATTR, cached(original))
    return True


def clear() -> None:
    """Drop the cached list."""
    _cache.clear()
