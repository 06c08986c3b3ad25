"""Bench devices: ``local`` and ``ssh://user@host:port``; names resolve through the devices file."""

from __future__ import annotations

import dataclasses

from edgeslim.device_bench.targets.base import DEVICE_KINDS, Connection, Device, DeviceOptions

#: Options a devices-file entry can also set; an explicitly given option wins over the file.
SHARED_OPTIONS = ("identity", "known_hosts", "python", "workdir", "connect_timeout", "idle_timeout")


def merge_options(options: DeviceOptions, entry: object) -> DeviceOptions:
    """``options`` with every unset (``None``) shared option taken from the devices-file ``entry``.

    Precedence is explicit option > devices file > default (defaults apply later, where used).
    """
    taken = {name: getattr(entry, name) for name in SHARED_OPTIONS if getattr(options, name) is None}
    return dataclasses.replace(options, **taken)


def resolve_device(spec: str, options: DeviceOptions | None = None) -> Device:
    """Turn ``local``, ``ssh://user@host:port`` or a devices-file name into a :class:`Device`.

    Options given explicitly (not ``None``) win over the devices file entry, which wins over
    the defaults.

    Raises:
        DeviceConfigError: Unknown name or malformed target.
    """
    from edgeslim.device_bench import devices
    from edgeslim.device_bench.targets import local, ssh  # noqa: F401  (register the kinds)

    opts = options or DeviceOptions()
    scheme = spec.split("://", 1)[0] if "://" in spec else spec
    if scheme in DEVICE_KINDS:
        return DEVICE_KINDS.get(scheme)(spec, opts)
    entry = devices.lookup(spec, opts.devices_file)
    return ssh.SshDevice(entry.host, entry.port, entry.user, merge_options(opts, entry), name=spec)


__all__ = ["DEVICE_KINDS", "SHARED_OPTIONS", "Connection", "Device", "DeviceOptions", "merge_options",
           "resolve_device"]
