"""The ``local`` target: the agent runs in a subprocess of this machine's Python."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgeslim.device_bench.targets.base import DEFAULT_WORKDIR, TARGET_KINDS, Connection, LineHandler, TargetOptions


class LocalConnection:
    """Files stay where they are; the agent runs as ``python agent.py`` in a subprocess.

    The work dir (default ``~/.cache/edgeslim-bench``) holds the device lock, so two local benches
    are serialised like remote ones.
    """

    def __init__(self, python: str, workdir: str | None) -> None:
        self.description = "local"
        self.python = python
        self._workdir = os.path.abspath(os.path.expanduser(workdir or DEFAULT_WORKDIR))
        os.makedirs(self._workdir, exist_ok=True)

    def workdir(self) -> str:
        return self._workdir

    def stage(self, local: Path, name: str) -> str:
        return str(Path(local).resolve())

    def free_bytes(self) -> int:
        return shutil.disk_usage(self._workdir).free

    def run(self, argv: list[str], on_line: LineHandler, env: dict[str, str] | None = None) -> int:
        full_env = dict(os.environ, **(env or {}))
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env,
                              cwd=self._workdir) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                on_line(line.rstrip("\n"))
            return proc.wait()

    def remove(self, path: str) -> None:
        p = Path(path)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists() and str(p).startswith(self._workdir):
            p.unlink()

    def close(self) -> None:
        """Nothing to release."""


class LocalTarget:
    """This machine.

    Args:
        options: ``python`` (default: the running interpreter) and ``workdir`` are used.
    """

    def __init__(self, options: TargetOptions) -> None:
        self.options = options
        self.description = "local"

    def connect(self) -> Connection:
        return LocalConnection(self.options.python or sys.executable, self.options.workdir)


@TARGET_KINDS.register("local")
def _local(spec: str, options: TargetOptions) -> LocalTarget:
    return LocalTarget(options)
