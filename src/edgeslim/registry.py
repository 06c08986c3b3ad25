"""A tiny registry: names to objects, declared by one decorator, duplicates refused.

Each extensible kind in edgeslim (importance criteria, quantization schemes, exporters,
runtimes, targets) owns one :class:`Registry`. Third-party packages register into them the
same way, or through the ``edgeslim.plugins`` entry-point group (loaded on first lookup).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Generic, TypeVar

from edgeslim.errors import RegistryError

T = TypeVar("T")

_ENTRY_POINT_GROUP = "edgeslim.plugins"
_entry_points_loaded = False


def _load_entry_points() -> None:
    """Import every module declared in the ``edgeslim.plugins`` entry-point group once."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=_ENTRY_POINT_GROUP):
        ep.load()


class Registry(Generic[T]):
    """A named collection of objects of one kind.

    Args:
        kind: What the registry holds, used in error messages (e.g. ``"importance criterion"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers its argument under ``name`` and returns it unchanged.

        Raises:
            RegistryError: ``name`` is already registered.
        """
        key = name.lower()

        def decorator(obj: T) -> T:
            if key in self._items:
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered (by {self._items[key]!r}); "
                    "pick another name"
                )
            self._items[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Look up ``name`` (case-insensitive).

        Raises:
            RegistryError: No such name; the message lists the known names.
        """
        key = name.lower()
        if key not in self._items:
            _load_entry_points()
        if key not in self._items:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items)) or 'none'}"
            )
        return self._items[key]

    def names(self) -> list[str]:
        """All registered names, sorted."""
        _load_entry_points()
        return sorted(self._items)

    def loaded(self) -> dict[str, T]:
        """The entries registered so far, by name, without loading the entry points."""
        return dict(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
