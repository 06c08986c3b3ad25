"""One serializer for every config: registered dataclasses and enums to JSON/YAML data and back.

A config class declares itself once with :func:`serializable`; :func:`to_data` /
:func:`from_data` (and the JSON/YAML helpers) then convert it, its enums and nested configs
by their type hints — no hand-written ``to_dict``/``from_dict`` pairs. As in torchao's config
serializer, data may carry ``_type`` and ``_version`` tags and only allow-listed (registered)
types are built from it::

    @serializable(version=1)
    @dataclass(frozen=True)
    class MyConfig:
        bits: int = 8
        mode: Mode = Mode.PTQ

    to_data(MyConfig())            # {"_type": "MyConfig", "_version": 1, "bits": 8, "mode": "ptq"}
    from_data({"bits": 4}, MyConfig)   # untagged data is read as the class the caller names

A field that needs its own form declares a :func:`codec` in its metadata (an import path for a
callable, a count for a list); a class written as one string (``params=0.5``, ``log2:4``) is
registered with ``text=True``; ``omit`` leaves out fields that are not data (a model) and
``extras`` adds computed keys for readers of the file.

Untagged ("plain") data is what results files and recipes hold; tagged data names its type,
so it loads without the caller naming it. A file written by a newer edgeslim (a higher
``_version``) is refused with a message; an older one goes through the class's ``upgrade`` hook.

This module is floor 1: it imports only the standard library and :mod:`edgeslim.errors`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePath
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from edgeslim.errors import ConfigError

TYPE_KEY = "_type"
VERSION_KEY = "_version"
CODEC_KEY = "edgeslim.codec"
T = TypeVar("T")


class SerializationError(ConfigError):
    """Config data cannot be written or read (unregistered type, bad value, unknown key, newer version)."""


@dataclasses.dataclass(frozen=True)
class Codec:
    """How one field is written and read when its type alone does not say (see :func:`codec`)."""

    write: Callable[[Any], Any]
    read: Callable[[Any], Any]


def codec(write: Callable[[Any], Any], read: Callable[[Any], Any] = lambda data: data) -> dict[str, Codec]:
    """Field metadata: write the field's value with ``write(value)``, read it back with ``read(data)``.

    Use as ``field(default=None, metadata=codec(to_path, from_path))``; None is written and read
    as None without calling them; the value ``read`` returns goes to the class as it is (its
    ``__post_init__`` may coerce it further).
    """
    return {CODEC_KEY: Codec(write, read)}


@dataclasses.dataclass(frozen=True)
class _Entry:
    cls: type
    version: int
    rename: Mapping[str, str]
    derived: tuple[str, ...]
    strict: bool
    what: str
    upgrade: Callable[[dict[str, Any], int], dict[str, Any]] | None
    text: bool = False
    omit: tuple[str, ...] = ()
    extras: Mapping[str, Callable[[Any], Any]] = dataclasses.field(default_factory=dict)


#: The allow-list: registered name -> entry.
_TYPES: dict[str, _Entry] = {}
_NAMES: dict[type, str] = {}


def serializable(
    name: str | None = None,
    *,
    version: int = 1,
    rename: Mapping[str, str] | None = None,
    derived: Sequence[str] = (),
    strict: bool = True,
    what: str | None = None,
    upgrade: Callable[[dict[str, Any], int], dict[str, Any]] | None = None,
    text: bool = False,
    omit: Sequence[str] = (),
    extras: Mapping[str, Callable[[Any], Any]] | None = None,
) -> Callable[[type[T]], type[T]]:
    """Class decorator: put a dataclass (or enum) on the serializer's allow-list.

    Args:
        name: The ``_type`` tag (default: the class name); unique across edgeslim and plugins.
        version: The data version this class writes; data with a higher one is refused.
        rename: Field -> key where a stored shape uses another key (e.g. ``{"config_name": "config"}``).
        derived: Properties written after the fields (for readers of the file) and ignored on load.
        strict: Refuse unknown keys on load (default); False ignores them (data from newer writers).
        what: What a key is called in error messages (default ``"<name> key"``).
        upgrade: ``(data, its version) -> data of this version``, for data an older edgeslim wrote.
        text: Write the object as ``str(obj)`` and read a string with ``cls.parse(text)`` (a mapping
            of its fields is read too), e.g. a target ``params=0.5``.
        omit: Fields never written (not data: a model, an analysis object); reading such data
            needs them to have defaults.
        extras: Key -> function of the object, written after the fields and derived properties
            unless it returns None, ignored on load (notes and summaries for readers of the file).

    Raises:
        SerializationError: The class is neither a dataclass nor an enum, or ``name`` is taken.
    """

    def deco(cls: type[T]) -> type[T]:
        if not (dataclasses.is_dataclass(cls) or (isinstance(cls, type) and issubclass(cls, enum.Enum))):
            raise SerializationError(f"edgeslim.config: {cls.__name__} is neither a dataclass nor an enum; only those serialize")
        key = name or cls.__name__
        if key in _TYPES and _TYPES[key].cls is not cls:
            raise SerializationError(f"edgeslim.config: config type {key!r} is already registered by "
                                     f"{_TYPES[key].cls.__module__}.{_TYPES[key].cls.__qualname__}; pass name=... to serializable")
        if text and not callable(getattr(cls, "parse", None)):
            raise SerializationError(f"edgeslim.config: {cls.__name__} is registered with text=True but has no parse(text)")
        _TYPES[key] = _Entry(cls, version, dict(rename or {}), tuple(derived), strict, what or f"{key} key", upgrade,
                             text, tuple(omit), dict(extras or {}))
        _NAMES[cls] = key
        return cls

    return deco


def registered() -> list[str]:
    """The ``_type`` names on the allow-list, sorted."""
    return sorted(_TYPES)


def _entry_of(cls: type) -> _Entry:
    for klass in cls.__mro__:
        if klass in _NAMES:
            return _TYPES[_NAMES[klass]]
    raise SerializationError(f"edgeslim.config: {cls.__module__}.{cls.__qualname__} is not a registered config type; "
                             "decorate it with @edgeslim.config.serializable()")


# ---- writing -------------------------------------------------------------------------------------
def to_data(obj: Any, *, tagged: bool = True) -> Any:
    """``obj`` as JSON/YAML-able data: registered dataclasses as dicts, enums as their values.

    Args:
        obj: A registered config (or a value made of them, lists, tuples, dicts and plain scalars).
        tagged: Add ``_type``/``_version`` to every config dict (False: the plain shape).

    Raises:
        SerializationError: A dataclass that is not registered, or a value JSON cannot hold.
    """
    if isinstance(obj, enum.Enum):  # first: a str/int enum is also a str/int
        return to_data(obj.value, tagged=tagged)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        entry = _entry_of(type(obj))
        if entry.text:
            return str(obj)
        out: dict[str, Any] = {TYPE_KEY: _NAMES[entry.cls], VERSION_KEY: entry.version} if tagged else {}
        for f in dataclasses.fields(obj):
            if f.name in entry.omit:
                continue
            value = getattr(obj, f.name)
            if CODEC_KEY in f.metadata and value is not None:
                value = f.metadata[CODEC_KEY].write(value)
            out[entry.rename.get(f.name, f.name)] = to_data(value, tagged=tagged)
        for prop in entry.derived:
            out[prop] = to_data(getattr(obj, prop), tagged=tagged)
        for key, fn in entry.extras.items():
            if (extra := fn(obj)) is not None:
                out[key] = to_data(extra, tagged=tagged)
        return out
    if isinstance(obj, Mapping):
        return {str(k): to_data(v, tagged=tagged) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_data(v, tagged=tagged) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    if getattr(obj, "shape", None) == () and callable(getattr(obj, "item", None)):  # a numpy/torch scalar
        return to_data(obj.item(), tagged=tagged)
    if getattr(obj, "shape", None) is not None and callable(getattr(obj, "tolist", None)):  # a numpy/torch array
        return to_data(obj.tolist(), tagged=tagged)
    raise SerializationError(f"edgeslim.config: cannot serialize a {type(obj).__name__} ({obj!r}); configs hold "
                             "registered dataclasses, enums, lists, dicts, str, int, float, bool and None")


def to_json(obj: Any, *, tagged: bool = True, indent: int | None = 2) -> str:
    """JSON text of :func:`to_data` (keys sorted)."""
    return json.dumps(to_data(obj, tagged=tagged), indent=indent, sort_keys=True)


def to_yaml(obj: Any, *, tagged: bool = True) -> str:
    """YAML text of :func:`to_data` (keys sorted)."""
    import yaml

    return str(yaml.safe_dump(to_data(obj, tagged=tagged), sort_keys=True))


# ---- reading -------------------------------------------------------------------------------------
def from_data(data: Any, cls: type[T] | None = None, *, where: str = "") -> T:
    """Build a registered config from :func:`to_data` output (tagged) or a plain dict of type ``cls``.

    Args:
        data: A dict (tagged with ``_type``, or plain when ``cls`` is given).
        cls: The expected type; required for untagged data, checked against the tag otherwise.
        where: Key path for error messages (e.g. ``"quantize.default"``).

    Raises:
        SerializationError: Unknown or unregistered type, a tag that is not ``cls``, a newer
            ``_version``, an unknown key, a missing required key, or a value of the wrong type.
    """
    at = f" at {where}" if where else ""
    if cls is not None and isinstance(data, cls):
        return data
    if isinstance(data, Mapping) and TYPE_KEY in data:
        tag = str(data[TYPE_KEY])
        if tag not in _TYPES:
            raise SerializationError(f"edgeslim.config: unknown config type {tag!r}{at}; known: {', '.join(registered())}")
        entry = _TYPES[tag]
        if cls is not None and not issubclass(entry.cls, cls):
            raise SerializationError(f"edgeslim.config: expected a {cls.__name__}{at}, the data is a {tag}")
        data = _upgraded(dict(data), entry, at)
    elif cls is None:
        raise SerializationError(f"edgeslim.config: untagged data{at} (no {TYPE_KEY!r} key): name the type it holds")
    else:
        entry = _entry_of(cls)
    if issubclass(entry.cls, enum.Enum):
        return _decode(data, entry.cls, where)
    if entry.text and isinstance(data, str):
        return entry.cls.parse(data)  # type: ignore[attr-defined]
    if not isinstance(data, Mapping):
        raise SerializationError(f"edgeslim.config: {_NAMES[entry.cls]}{at} must be a mapping, got {type(data).__name__}")
    return _build(entry, data, where)


def from_json(text: str, cls: type[T] | None = None) -> T:
    """Parse :func:`to_json` output (or plain JSON of ``cls``)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SerializationError(f"edgeslim.config: not JSON ({exc})") from exc
    return from_data(data, cls)


def from_yaml(text: str, cls: type[T] | None = None) -> T:
    """Parse :func:`to_yaml` output (or plain YAML of ``cls``; empty text is an empty mapping)."""
    import yaml

    return from_data(yaml.safe_load(text) or {}, cls)


def _upgraded(data: dict[str, Any], entry: _Entry, at: str) -> dict[str, Any]:
    version = data.get(VERSION_KEY, entry.version)
    name = _NAMES[entry.cls]
    if not isinstance(version, int) or isinstance(version, bool):
        raise SerializationError(f"edgeslim.config: {name}{at}: {VERSION_KEY} must be an integer, got {version!r}")
    if version > entry.version:
        raise SerializationError(f"edgeslim.config: {name}{at} has version {version}, this edgeslim reads up to "
                                 f"{entry.version}: upgrade edgeslim to read it")
    if version < entry.version:
        if entry.upgrade is None:
            raise SerializationError(f"edgeslim.config: {name}{at} has version {version} and no upgrade to "
                                     f"{entry.version} is declared; re-create the config with this edgeslim")
        data = entry.upgrade(data, version)
    return data


def _build(entry: _Entry, data: Mapping[str, Any], where: str) -> Any:
    cls, name = entry.cls, _NAMES[entry.cls]
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in entry.omit}
    key_of = {name: entry.rename.get(name, name) for name in fields}
    keys = set(data) - {TYPE_KEY, VERSION_KEY} - set(entry.derived) - set(entry.extras)
    unknown = sorted(keys - set(key_of.values()))
    if unknown and entry.strict:
        at = f" at {where}" if where else ""
        raise SerializationError(f"unknown {entry.what}(s) {', '.join(unknown)}{at}; known: {', '.join(sorted(key_of.values()))}")
    kwargs = {f: fields[f].metadata[CODEC_KEY].read(data[k]) if CODEC_KEY in fields[f].metadata and data[k] is not None
              else _decode(data[k], hints[f], f"{where}.{k}" if where else k) for f, k in key_of.items() if k in data}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise SerializationError(f"edgeslim.config: cannot build {name}{' at ' + where if where else ''}: {exc}") from exc


def _bad(value: Any, want: str, where: str) -> SerializationError:
    return SerializationError(f"edgeslim.config: {where or 'value'} must be {want}, got {value!r}")


def _decode(value: Any, hint: Any, where: str) -> Any:
    """``value`` read as type ``hint``."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any or hint is object:
        return from_data(value, where=where) if isinstance(value, Mapping) and TYPE_KEY in value else value
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: X's own errors (a config's ConfigError subclass) pass through
            return _decode(value, options[0], where)
        errors = []
        for option in options:
            try:
                return _decode(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise SerializationError(errors[0]) if errors else _bad(value, str(hint), where)
    if origin is typing.Literal:
        if value not in args:
            raise _bad(value, f"one of {', '.join(map(repr, args))}", where)
        return value
    if origin in (tuple, list, Sequence) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _bad(value, "a list", where)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _bad(value, f"a list of {len(args)} items", where)
            return tuple(_decode(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [_decode(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise _bad(value, "a mapping", where)
        vt = args[1] if len(args) == 2 else Any
        return {k: _decode(v, vt, f"{where}.{k}") for k, v in value.items()}
    if isinstance(hint, type):
        return _scalar(value, hint, where)
    return value


def _scalar(value: Any, hint: type, where: str) -> Any:
    if issubclass(hint, enum.Enum):
        if isinstance(value, hint):
            return value
        try:
            return hint(value)
        except ValueError:
            raise _bad(value, f"one of {', '.join(str(e.value) for e in hint)}", where) from None
    if dataclasses.is_dataclass(hint):
        return from_data(value, hint, where=where)
    if hint is bool:
        if not isinstance(value, bool):
            raise _bad(value, "true or false", where)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(value, "an integer", where)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(value, "a number", where)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _bad(value, "a string", where)
        return value
    if issubclass(hint, PurePath):
        return hint(value)
    return value


__all__ = [
    "CODEC_KEY",
    "TYPE_KEY",
    "VERSION_KEY",
    "Codec",
    "SerializationError",
    "codec",
    "from_data",
    "from_json",
    "from_yaml",
    "registered",
    "serializable",
    "to_data",
    "to_json",
    "to_yaml",
]
