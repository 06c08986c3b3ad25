"""Load a user's callable named ``path/to/file.py:name`` or ``package.module:name``.

Used by ``--model FILE.py:factory`` (:mod:`edgeslim.models.user`) and ``--data
python:module:function`` (:mod:`edgeslim.data.python_source`). Every failure is an
:class:`~edgeslim.errors.EdgeslimError` naming the file or module and what to do.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeslim.errors import EdgeslimError

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})*$")
_NAME_RE = re.compile(rf"^{_IDENT}$")


class UserCodeError(EdgeslimError):
    """A user's file, module or callable cannot be loaded or called."""


@dataclass(frozen=True)
class CallableSpec:
    """Where a user's callable lives.

    Attributes:
        file: The absolute ``.py`` path (``None`` for a module).
        module: The dotted module name (``None`` for a file).
        name: The callable's name in that file or module.
    """

    file: Path | None
    module: str | None
    name: str

    @property
    def where(self) -> str:
        """``/abs/file.py`` or ``package.module``."""
        return str(self.file) if self.file is not None else str(self.module)

    def __str__(self) -> str:
        return f"{self.where}:{self.name}"

    def file_sha256(self) -> str | None:
        """The sha256 of the source file (a module: of its file, when it has one)."""
        path = self.file
        if path is None and self.module is not None:
            found = importlib.util.find_spec(self.module)
            origin = getattr(found, "origin", None) if found is not None else None
            path = Path(origin) if origin and origin.endswith(".py") else None
        return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None and path.is_file() else None


def looks_like_spec(text: str) -> bool:
    """Whether ``text`` has the shape ``FILE.py:name`` or ``package.module:name`` (nothing is imported)."""
    where, sep, name = text.rpartition(":")
    if not sep or not _NAME_RE.match(name):
        return False
    return where.endswith(".py") or bool(_MODULE_RE.match(where))


def parse_spec(text: str, *, what: str = "--model") -> CallableSpec:
    """Parse ``FILE.py:name`` (relative paths: from the current folder) or ``package.module:name``.

    Raises:
        UserCodeError: Not of that shape.
    """
    if not looks_like_spec(text):
        raise UserCodeError(
            f"{what} {text!r}: expected path/to/file.py:function or package.module:function "
            "(a function or class that returns the object)"
        )
    where, _, name = text.rpartition(":")
    if where.endswith(".py"):
        return CallableSpec(Path(where).expanduser().resolve(), None, name)
    return CallableSpec(None, where, name)


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise UserCodeError(
            f"{path} does not exist (the file part of FILE.py:function; relative paths are read from "
            "the current folder)"
        )
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    mod_name = f"edgeslim_user_{path.stem}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise UserCodeError(f"{path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    # the file's folder on sys.path while it runs, so that it can import its neighbours
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[mod_name]
        raise UserCodeError(f"importing {path} failed: {type(exc).__name__}: {exc}; fix the file") from exc
    finally:
        if sys.path and sys.path[0] == str(path.parent):
            sys.path.pop(0)
    return module


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise UserCodeError(
            f"module {name!r} not found ({exc}): install the package, add its folder to PYTHONPATH, "
            "or name the file instead (path/to/file.py:function)"
        ) from exc
    except Exception as exc:
        raise UserCodeError(f"importing module {name!r} failed: {type(exc).__name__}: {exc}") from exc


def load_callable(spec: CallableSpec) -> Callable[..., Any]:
    """Import the file or module of ``spec`` and return its callable.

    Raises:
        UserCodeError: Missing file or module, import error, no such name, not callable.
    """
    module = _import_file(spec.file) if spec.file is not None else _import_module(str(spec.module))
    obj = getattr(module, spec.name, None)
    if obj is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise UserCodeError(
            f"{spec.where} has no {spec.name!r}; callables defined there: {', '.join(public) or 'none'}"
        )
    if not callable(obj):
        raise UserCodeError(f"{spec} is a {type(obj).__name__}, not a function or class")
    return obj


def call(spec: CallableSpec, *args: Any) -> Any:
    """Load and call ``spec``; an exception it raises becomes a :class:`UserCodeError` naming it.

    Raises:
        UserCodeError: Loading failed, or the callable raised.
    """
    fn = load_callable(spec)
    try:
        return fn(*args)
    except EdgeslimError:
        raise
    except Exception as exc:
        raise UserCodeError(
            f"{spec}() raised {type(exc).__name__}: {exc}; fix it (it is called without arguments)"
        ) from exc


__all__ = ["CallableSpec", "UserCodeError", "call", "load_callable", "looks_like_spec", "parse_spec"]
