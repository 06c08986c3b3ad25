"""What a bench device is: a way to stage files on a machine and run the agent there.

Device kinds are registered in :data:`DEVICE_KINDS` by URL scheme (``local``, ``ssh``); a name
that is neither is looked up in the devices file. ("Target" is the word of the pruning plugin;
on the bench side the thing benchmarked on is a *device*. The CLI flag stays ``--target``.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgeslim.device_bench.errors import DeviceConfigError
from edgeslim.registry import Registry

#: Where files go on a device unless ``workdir`` says otherwise (``~`` is the login's home).
DEFAULT_WORKDIR = "~/.cache/edgeslim-bench"
#: Seconds allowed for TCP connect, SSH banner and authentication unless set.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds a command on the device may print nothing before it counts as wedged, unless set.
DEFAULT_IDLE_TIMEOUT = 300.0
#: The file :meth:`Connection.make_dir` puts in every folder it creates; only such folders are deleted.
OWNED_MARKER = ".edgeslim-owned"
#: ``on_line(line)`` receives each line the agent prints, as it is printed.
LineHandler = Callable[[str], None]
#: ``waiting()`` is true while silence is expected (e.g. the agent waits for the device lock).
WaitingProbe = Callable[[], bool]


@dataclass(frozen=True)
class DeviceOptions:
    """Connection settings that the target string does not carry.

    ``None`` means "not given": for a devices-file name the file's value applies, else the default
    (precedence: explicit option > devices file > default).

    Attributes:
        identity: Private key file for SSH (else the agent and default keys).
        known_hosts: known_hosts file checked strictly (default ``~/.ssh/known_hosts``).
        python: The Python interpreter on the device (default ``python3``; local: this one).
        workdir: Where files are uploaded on the device (default ``~/.cache/edgeslim-bench``).
            Over SSH a relative path is relative to the login's home directory on the device
            (as with scp); locally it is relative to the current directory.
        connect_timeout: Seconds allowed for TCP connect, SSH banner and authentication
            (default :data:`DEFAULT_CONNECT_TIMEOUT`).
        idle_timeout: Seconds a command on the device may print nothing (and an upload make no
            progress) before it is abandoned as wedged (default :data:`DEFAULT_IDLE_TIMEOUT`;
            0 turns the check off).
        allow_agent: Whether SSH may use a running ssh-agent.
        devices_file: The TOML devices file used to resolve names.
    """

    identity: str | None = None
    known_hosts: str | None = None
    python: str | None = None
    workdir: str | None = None
    connect_timeout: float | None = None
    idle_timeout: float | None = None
    allow_agent: bool = True
    devices_file: str | None = None

    def __post_init__(self) -> None:
        if self.connect_timeout is not None and not self.connect_timeout > 0:
            raise DeviceConfigError(f"connect timeout must be > 0 seconds (got {self.connect_timeout})")
        if self.idle_timeout is not None and self.idle_timeout < 0:
            raise DeviceConfigError(f"idle timeout must be >= 0 seconds, 0 for none (got {self.idle_timeout})")

    def connect_timeout_s(self) -> float:
        """The connect timeout in effect."""
        return DEFAULT_CONNECT_TIMEOUT if self.connect_timeout is None else float(self.connect_timeout)

    def idle_timeout_s(self) -> float | None:
        """The idle timeout in effect (``None``: no limit)."""
        t = DEFAULT_IDLE_TIMEOUT if self.idle_timeout is None else float(self.idle_timeout)
        return t or None


class Connection(Protocol):
    """An open session on a device."""

    description: str
    python: str

    def workdir(self) -> str:
        """Absolute path of the bench work directory on the device (created)."""

    def make_dir(self, name: str) -> str:
        """Create the new folder ``name`` (one path component) in the work dir, marked as edgeslim's; return its path.

        Raises:
            DeviceError: It exists already (edgeslim never adopts a folder it did not create).
        """

    def stage(self, local: Path, name: str) -> str:
        """Make ``local`` available on the device as ``name`` in the work dir; return its path there."""

    def free_bytes(self) -> int:
        """Free bytes in the work directory."""

    def run(self, argv: list[str], on_line: LineHandler, env: dict[str, str] | None = None,
            waiting: WaitingProbe | None = None) -> int:
        """Run ``argv`` on the device (each argument quoted), stream its output lines; return the exit code.

        Args:
            argv: The command.
            on_line: Called with each output line (stdout and stderr together).
            env: Extra environment variables.
            waiting: While it returns true, silence does not count towards the idle timeout.

        Raises:
            DeviceDisconnectedError: The connection dropped before the command finished.
            DeviceIdleTimeoutError: The command printed nothing for longer than the idle timeout.
        """

    def remove(self, path: str) -> None:
        """Delete a folder made by :meth:`make_dir` (and everything in it).

        Raises:
            UnsafeDeleteError: ``path`` is not strictly inside the work dir (after resolving ``..``
                and symbolic links) or has no :data:`OWNED_MARKER`; nothing is deleted.
        """

    def close(self) -> None:
        """Release the connection."""


class Device(Protocol):
    """A place to bench: ``connect()`` opens a :class:`Connection`."""

    description: str

    def connect(self) -> Connection:
        """Open a session."""


def check_dir_name(name: str) -> None:
    """Refuse a :meth:`Connection.make_dir` name that is not one plain path component."""
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise DeviceConfigError(f"bad work-dir folder name {name!r}: one path component expected")


#: scheme -> factory ``(spec, options) -> Device``
DeviceFactory = Callable[[str, DeviceOptions], Device]
DEVICE_KINDS: Registry[DeviceFactory] = Registry("bench device kind")
