"""One lock per bench device on this machine, so that two fleet runs never share a board.

The agent also holds a lock on the device itself (``bench.lock`` in its work dir, waited for);
this host-side lock is taken first by :func:`~edgeslim.device_bench.fleet.bench_fleet` and is
refused at once when held, with a message naming the holder, instead of waiting behind it.
Locks are ``flock`` locks on ``$EDGESLIM_CACHE/locks/<device>.lock`` (default
``~/.cache/edgeslim/locks``): the kernel releases them when the holder exits, even if it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from edgeslim.device_bench.errors import DeviceBusyError


def default_lock_dir() -> Path:
    """``$EDGESLIM_CACHE/locks``, else ``~/.cache/edgeslim/locks``."""
    env = os.environ.get("EDGESLIM_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "edgeslim") / "locks"


def lock_path(device: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """The lock file of ``device`` (its description, e.g. ``local`` or ``ssh://pi@10.0.0.5:22``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", device).strip("_") or "device"
    return (Path(directory) if directory else default_lock_dir()) / f"{name}.lock"


@contextlib.contextmanager
def device_lock(device: str, spec: str | None = None,
                directory: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """Hold the host-side lock of ``device`` for the duration of the ``with`` block.

    Args:
        device: The device's description (``local``, ``ssh://user@host:port``): the lock's key.
        spec: How the user named it (``--target``), for the message.
        directory: Folder of the lock files (default :func:`default_lock_dir`).

    Yields:
        The lock file's path.

    Raises:
        DeviceBusyError: Another process (or another run in this one) holds it; the message names
            the holder and the lock file.
    """
    path = lock_path(device, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            raise DeviceBusyError(
                f"{device} is busy: another edgeslim bench ({holder}) holds its lock {path}; wait for it to finish "
                f"or drop --target {spec or device} from this run") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield path
    finally:
        handle.close()  # closing releases the flock
