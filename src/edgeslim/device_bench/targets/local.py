"""The ``local`` device: the agent runs in a subprocess of this machine's Python."""

from __future__ import annotations

import os
import selectors
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgeslim.device_bench.errors import DeviceError, DeviceIdleTimeoutError, UnsafeDeleteError
from edgeslim.device_bench.targets.base import (
    DEFAULT_WORKDIR,
    DEVICE_KINDS,
    OWNED_MARKER,
    Connection,
    DeviceOptions,
    LineHandler,
    WaitingProbe,
    check_dir_name,
)


class LocalConnection:
    """Files stay where they are; the agent runs as ``python agent.py`` in a subprocess.

    The work dir (default ``~/.cache/edgeslim-bench``; a relative one is relative to the current
    directory) holds the device lock, so two local benches are serialised like remote ones.

    Args:
        python: The interpreter that runs the agent.
        workdir: The work dir (created).
        idle_timeout: Seconds a command may print nothing before it is killed (``None``: no limit).
    """

    def __init__(self, python: str, workdir: str | None, idle_timeout: float | None = None) -> None:
        self.description = "local"
        self.python = python
        self.idle_timeout = idle_timeout
        self._workdir = os.path.abspath(os.path.expanduser(workdir or DEFAULT_WORKDIR))
        os.makedirs(self._workdir, exist_ok=True)

    def workdir(self) -> str:
        return self._workdir

    def make_dir(self, name: str) -> str:
        check_dir_name(name)
        path = Path(self._workdir, name)
        try:
            path.mkdir()
        except FileExistsError as exc:
            raise DeviceError(f"{path} exists already; edgeslim only uses folders it creates itself (remove it or "
                              "pick another --workdir)") from exc
        (path / OWNED_MARKER).write_text("created by edgeslim; deleted by edgeslim when done\n")
        return str(path)

    def stage(self, local: Path, name: str) -> str:
        return str(Path(local).resolve())

    def free_bytes(self) -> int:
        return shutil.disk_usage(self._workdir).free

    def run(self, argv: list[str], on_line: LineHandler, env: dict[str, str] | None = None,
            waiting: WaitingProbe | None = None) -> int:
        full_env = dict(os.environ, **(env or {}))
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env,
                              cwd=self._workdir) as proc, selectors.DefaultSelector() as sel:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            sel.register(fd, selectors.EVENT_READ)
            buf, last = b"", time.monotonic()
            while True:
                limit = self.idle_timeout
                if not sel.select(None if limit is None else max(0.0, limit - (time.monotonic() - last))):
                    if waiting is not None and waiting():
                        last = time.monotonic()
                        continue
                    proc.kill()
                    proc.wait()
                    raise DeviceIdleTimeoutError(
                        f"local: {shlex.join(argv)[:300]!r} printed nothing for {limit:g} s and was killed (idle "
                        "timeout). If it is just slow, raise --idle-timeout (0 turns the check off)")
                data = os.read(fd, 65536)
                if not data:
                    break
                last = time.monotonic()
                *lines, buf = (buf + data).split(b"\n")
                for line in lines:
                    on_line(line.decode("utf-8", "replace"))
            if buf:
                on_line(buf.decode("utf-8", "replace"))
            return proc.wait()

    def remove(self, path: str) -> None:
        workdir = Path(self._workdir).resolve()
        target = Path(path)
        resolved = target.resolve()  # follows symbolic links and ``..``: what would really be deleted
        if workdir not in resolved.parents:
            raise UnsafeDeleteError(f"refusing to delete {path} on local: it resolves to {resolved}, which is not "
                                    f"inside edgeslim's work dir {workdir}; edgeslim deletes only what it created "
                                    "there")
        if not os.path.lexists(resolved):
            return
        if target.is_symlink() or not resolved.is_dir() or not (resolved / OWNED_MARKER).is_file():
            raise UnsafeDeleteError(f"refusing to delete {path} on local: it was not created by edgeslim (not a "
                                    f"folder holding {OWNED_MARKER}); delete it yourself if it is yours to delete")
        shutil.rmtree(resolved)

    def close(self) -> None:
        """Nothing to release."""


class LocalDevice:
    """This machine.

    Args:
        options: ``python`` (default: the running interpreter), ``workdir`` and ``idle_timeout`` are used.
    """

    def __init__(self, options: DeviceOptions) -> None:
        self.options = options
        self.description = "local"

    def connect(self) -> Connection:
        return LocalConnection(self.options.python or sys.executable, self.options.workdir,
                               self.options.idle_timeout_s())


@DEVICE_KINDS.register("local")
def _local(spec: str, options: DeviceOptions) -> LocalDevice:
    return LocalDevice(options)
