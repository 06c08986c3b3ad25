"""The devices file: TOML that names boards so users type ``--target pi4``.

Format (``~/.config/edgeslim/devices.toml``, or ``$EDGESLIM_DEVICES``, or ``--devices FILE``)::

    [devices.pi4]
    host = "192.168.1.50"      # required
    user = "pi"
    port = 22
    identity = "~/.ssh/id_ed25519"
    known_hosts = "~/.ssh/known_hosts"
    python = "python3"
    workdir = "~/.cache/edgeslim-bench"   # relative: from the login's home on the device
    connect_timeout = 10                  # seconds for connect + SSH handshake
    idle_timeout = 300                    # seconds a command may print nothing (0: no limit)

A value given on the command line (or to :func:`~edgeslim.device_bench.bench` in its options)
wins over the file's; the file's wins over the defaults.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edgeslim.device_bench.errors import DeviceConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class DeviceEntry:
    """One board of the devices file (all but ``host`` optional)."""

    name: str
    host: str
    user: str | None = None
    port: int = 22
    identity: str | None = None
    known_hosts: str | None = None
    python: str | None = None
    workdir: str | None = None
    connect_timeout: float | None = None
    idle_timeout: float | None = None

    def url(self) -> str:
        """The equivalent ``ssh://user@host:port`` target."""
        user = f"{self.user}@" if self.user else ""
        return f"ssh://{user}{self.host}:{self.port}"


def default_devices_file() -> Path:
    """``$EDGESLIM_DEVICES`` or ``~/.config/edgeslim/devices.toml``."""
    env = os.environ.get("EDGESLIM_DEVICES")
    return Path(env) if env else Path.home() / ".config" / "edgeslim" / "devices.toml"


def load_devices(path: str | os.PathLike[str] | None = None) -> dict[str, DeviceEntry]:
    """Read every ``[devices.NAME]`` table of the devices file (an absent file means none).

    Raises:
        DeviceConfigError: The file is not valid TOML or an entry has unknown or missing keys.
    """
    file = Path(path) if path else default_devices_file()
    if not file.exists():
        if path:
            raise DeviceConfigError(f"devices file {file} does not exist")
        return {}
    try:
        doc = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DeviceConfigError(f"devices file {file}: {exc}") from exc
    known = {f.name for f in fields(DeviceEntry)} - {"name"}
    out: dict[str, DeviceEntry] = {}
    for name, entry in doc.get("devices", {}).items():
        extra = set(entry) - known
        if extra or "host" not in entry:
            raise DeviceConfigError(
                f"devices file {file}, [devices.{name}]: "
                + (f"unknown keys {sorted(extra)}; known: {sorted(known)}" if extra else "'host' is required"))
        out[name] = DeviceEntry(name=name, **_typed(entry, f"devices file {file}, [devices.{name}]"))
    return out


_NUMBERS: dict[str, type] = {"port": int, "connect_timeout": float, "idle_timeout": float}


def _typed(entry: dict[str, Any], where: str) -> dict[str, Any]:
    out = dict(entry)
    for key, kind in _NUMBERS.items():
        if key in out:
            value = out[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                raise DeviceConfigError(f"{where}: {key} must be a number{' (integer)' if kind is int else ''}, "
                                        f"got {value!r}")
            out[key] = kind(value)
    for key in ("connect_timeout", "idle_timeout"):
        if key in out and (out[key] < 0 or (key == "connect_timeout" and out[key] == 0)):
            raise DeviceConfigError(f"{where}: {key} must be {'>' if key == 'connect_timeout' else '>='} 0, "
                                    f"got {out[key]:g}")
    return out


def lookup(name: str, path: str | os.PathLike[str] | None = None) -> DeviceEntry:
    """The device called ``name``.

    Raises:
        DeviceConfigError: No such device; the message lists the known ones and the file.
    """
    devices = load_devices(path)
    if name not in devices:
        raise DeviceConfigError(
            f"unknown target {name!r}: not 'local', not ssh://user@host:port and not in the devices file "
            f"{Path(path) if path else default_devices_file()} (known: {', '.join(sorted(devices)) or 'none'})")
    return devices[name]
