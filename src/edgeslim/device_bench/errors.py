"""Errors of :mod:`edgeslim.device_bench`; each message names the device and says what to do."""

from __future__ import annotations

from edgeslim.errors import ConfigError, EdgeslimError


class DeviceError(EdgeslimError):
    """Something went wrong on or on the way to a benchmark device."""


class DeviceConfigError(DeviceError, ConfigError):
    """A target string, devices file entry or bench option is invalid."""


class DeviceUnreachableError(DeviceError, ConnectionError):
    """The device refused the connection or could not be resolved."""


class DeviceTimeoutError(DeviceError, TimeoutError):
    """The device did not answer within the connect timeout."""


class DeviceIdleTimeoutError(DeviceTimeoutError):
    """A command on the device printed nothing for longer than the idle timeout (a wedged board or agent)."""


class DeviceAuthError(DeviceError):
    """The device rejected every key offered."""


class DeviceBusyError(DeviceError):
    """Another edgeslim bench on this machine holds the device's lock (a fleet never shares a board)."""


class HostKeyError(DeviceError):
    """The device's host key is unknown or changed (strict host-key checking)."""


class FingerprintMismatchError(HostKeyError):
    """``device trust``: the key the device offers does not have the fingerprint the user gave."""


class DeviceDisconnectedError(DeviceError):
    """The connection dropped during a run; finished results are kept in the JSON-lines file."""


class DeviceDiskFullError(DeviceError, OSError):
    """The device's work directory has no room for the uploaded files."""


class UnsafeDeleteError(DeviceError):
    """A deletion was refused: the path is outside edgeslim's work dir or was not created by edgeslim."""


class RuntimeMissingError(DeviceError):
    """The inference runtime (or numpy) is not installed on the device."""


class AgentError(DeviceError):
    """The on-device agent failed; the message carries its error and stderr."""
