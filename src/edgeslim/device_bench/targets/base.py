"""What a bench target is: a way to stage files on a machine and run the agent there.

Target kinds are registered in :data:`TARGET_KINDS` by URL scheme (``local``, ``ssh``); a name
that is neither is looked up in the devices file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgeslim.registry import Registry

#: Where files go on a target unless ``workdir`` says otherwise (``~`` is the login's home).
DEFAULT_WORKDIR = "~/.cache/edgeslim-bench"
#: ``on_line(line)`` receives each line the agent prints, as it is printed.
LineHandler = Callable[[str], None]


@dataclass(frozen=True)
class TargetOptions:
    """Connection settings that the target string does not carry.

    Attributes:
        identity: Private key file for SSH (else the agent and default keys).
        known_hosts: known_hosts file checked strictly (default ``~/.ssh/known_hosts``).
        python: The Python interpreter on the device (default ``python3``; local: this one).
        workdir: Where files are uploaded on the device (default ``~/.cache/edgeslim-bench``).
        connect_timeout: Seconds allowed for TCP connect, SSH banner and authentication.
        allow_agent: Whether SSH may use a running ssh-agent.
        devices_file: The TOML devices file used to resolve names.
    """

    identity: str | None = None
    known_hosts: str | None = None
    python: str | None = None
    workdir: str | None = None
    connect_timeout: float = 10.0
    allow_agent: bool = True
    devices_file: str | None = None


class Connection(Protocol):
    """An open session on a target."""

    description: str
    python: str

    def workdir(self) -> str:
        """Absolute path of the bench work directory on the target (created)."""

    def stage(self, local: Path, name: str) -> str:
        """Make ``local`` available on the target as ``name`` in the work dir; return its path there."""

    def free_bytes(self) -> int:
        """Free bytes in the work directory."""

    def run(self, argv: list[str], on_line: LineHandler, env: dict[str, str] | None = None) -> int:
        """Run ``argv`` on the target (each argument quoted), stream its output lines; return the exit code.

        Raises:
            DeviceDisconnectedError: The connection dropped before the command finished.
        """

    def remove(self, path: str) -> None:
        """Delete a staged file or directory tree on the target (best effort is not allowed: errors raise)."""

    def close(self) -> None:
        """Release the connection."""


class Target(Protocol):
    """A place to bench: ``connect()`` opens a :class:`Connection`."""

    description: str

    def connect(self) -> Connection:
        """Open a session."""


#: scheme -> factory ``(spec, options) -> Target``
TargetFactory = Callable[[str, TargetOptions], Target]
TARGET_KINDS: Registry[TargetFactory] = Registry("bench target kind")
