"""Bench targets: ``local`` and ``ssh://user@host:port``; names resolve through the devices file."""

from __future__ import annotations

import dataclasses

from edgeslim.device_bench.targets.base import TARGET_KINDS, Connection, Target, TargetOptions


def resolve_target(spec: str, options: TargetOptions | None = None) -> Target:
    """Turn ``local``, ``ssh://user@host:port`` or a devices-file name into a :class:`Target`.

    Options given explicitly win over the devices file entry.

    Raises:
        DeviceConfigError: Unknown name or malformed target.
    """
    from edgeslim.device_bench import devices
    from edgeslim.device_bench.targets import local, ssh  # noqa: F401  (register the kinds)

    opts = options or TargetOptions()
    scheme = spec.split("://", 1)[0] if "://" in spec else spec
    if scheme in TARGET_KINDS:
        return TARGET_KINDS.get(scheme)(spec, opts)
    dev = devices.lookup(spec, opts.devices_file)
    merged = dataclasses.replace(
        opts,
        identity=opts.identity or dev.identity,
        known_hosts=opts.known_hosts or dev.known_hosts,
        python=opts.python or dev.python,
        workdir=opts.workdir or dev.workdir,
        connect_timeout=dev.connect_timeout if dev.connect_timeout is not None else opts.connect_timeout,
    )
    return TARGET_KINDS.get("ssh")(dev.url(), merged)


__all__ = ["TARGET_KINDS", "Connection", "Target", "TargetOptions", "resolve_target"]
