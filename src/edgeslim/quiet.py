"""Known third-party noise, silenced around edgeslim's own calls and imports — never process-wide.

- torch logs ``<enum 'KernelPreference'> is an Enum subclass ...`` (``W1207 ... _pytree.py``)
  when torchao registers an enum as a pytree constant at import time; it tells a torchao
  developer something, not a user of edgeslim.
- Importing litert-torch prints absl's ``WARNING: All log messages before absl::InitializeLog()``
  and TensorFlow's ``oneDNN custom operations are on`` from C++, straight to file descriptor 2;
  its converter prints ``Estimated count of arithmetic ops`` the same way, and the LiteRT
  interpreter ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.``

:func:`quiet_logs` drops the known log records while it is active (a :class:`logging.Filter`
added to the one logger, removed on exit); :func:`quiet_imports` also captures file
descriptor 2 while a noisy library is imported for the first time and writes back every line
that is not known noise (:func:`quiet_stderr` does that around any block). Nothing here changes ``warnings`` filters or outlives the ``with``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

#: (logger name, start of the message template) of log records known to be noise.
KNOWN_LOG_NOISE: tuple[tuple[str, str], ...] = (
    ("torch.utils._pytree", "%s is an Enum subclass and is now natively supported by torch.compile"),
)
#: Lines written to file descriptor 2 from C++ while a library is imported, known to be noise.
KNOWN_STDERR_NOISE: tuple[re.Pattern[str], ...] = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^I\d{4} .*\] oneDNN custom operations are on\."),
    re.compile(r"^I\d{4} .*flatbuffer_export\.cc:\d+\] Estimated count of arithmetic ops"),
    re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"),
)


class _DropKnown(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Drop the log records of :data:`KNOWN_LOG_NOISE` while the ``with`` block runs."""
    added = [(logging.getLogger(name), _DropKnown(prefix)) for name, prefix in KNOWN_LOG_NOISE]
    for logger, filt in added:
        logger.addFilter(filt)
    try:
        yield
    finally:
        for logger, filt in added:
            logger.removeFilter(filt)


@contextlib.contextmanager
def quiet_imports(*modules: str) -> Iterator[None]:
    """Silence the known noise of importing ``modules`` (log records, and C++ lines on stderr).

    While any of ``modules`` is not imported yet, file descriptor 2 is captured for the
    duration of the block and every line that is not :data:`KNOWN_STDERR_NOISE` is written
    back to stderr afterwards (nothing else is lost, only delayed). Once they are imported,
    only :func:`quiet_logs` applies.

    Args:
        modules: Top-level names of the libraries the block may import (``litert_torch``).
    """
    with quiet_logs():
        if all(m in sys.modules for m in modules):
            yield
            return
        with quiet_stderr():
            yield


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Capture file descriptor 2 (C++ output too) during the block; write back what is not known noise.

    Lines matching :data:`KNOWN_STDERR_NOISE` are dropped; every other line is written to
    ``sys.stderr`` when the block ends (delayed, never lost). Without a usable descriptor 2,
    nothing is captured.
    """
    if not _fd2_usable():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            _write_back(captured.read().decode("utf-8", errors="replace"))


def import_quietly(name: str) -> ModuleType:
    """``importlib.import_module(name)`` inside :func:`quiet_imports` of its top-level package."""
    with quiet_imports(name.partition(".")[0]):
        return importlib.import_module(name)


def _fd2_usable() -> bool:
    try:
        os.fstat(2)
    except OSError:
        return False
    return True


def _write_back(text: str) -> None:
    kept = [line for line in text.splitlines(keepends=True)
            if not any(p.search(line.rstrip("\n")) for p in KNOWN_STDERR_NOISE)]
    if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


__all__ = ["KNOWN_LOG_NOISE", "KNOWN_STDERR_NOISE", "import_quietly", "quiet_imports", "quiet_logs", "quiet_stderr"]
