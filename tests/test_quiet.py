"""edgeslim.quiet: known third-party noise is dropped around edgeslim's calls, nothing else, never for good."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from edgeslim.quiet import quiet_imports, quiet_logs, quiet_stderr

KERNEL_PREFERENCE = "is an Enum subclass and is now natively supported"


def test_quiet_logs_drops_only_the_known_record_and_only_inside(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("torch.utils._pytree")
    template = "%s is an Enum subclass and is now natively supported by torch.compile as an opaque value type."
    with caplog.at_level(logging.WARNING, logger="torch.utils._pytree"):
        with quiet_logs():
            log.warning(template, "<enum 'KernelPreference'>")
            log.warning("something else: %s", 1)
        assert log.filters == []  # removed on exit
        log.warning(template, "<enum 'Other'>")
    assert [r.getMessage() for r in caplog.records] == [
        "something else: 1", template % "<enum 'Other'>"]


def test_quiet_stderr_drops_known_cxx_lines_and_writes_back_the_rest(capfd: pytest.CaptureFixture[str]) -> None:
    with quiet_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1796673610.938981    8451 port.cc:153] oneDNN custom operations are on. You may\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"a real warning from C++\n")
        print("a Python line on stderr", file=sys.stderr)
    err = capfd.readouterr().err
    assert sorted(err.splitlines()) == ["a Python line on stderr", "a real warning from C++"]


def test_importing_edgeslim_quantization_prints_no_torchao_noise() -> None:
    """The first import of torchao (through edgeslim) logs no KernelPreference warning; the filter is gone after."""
    code = ("import logging, edgeslim\n"
            "edgeslim.quantize\n"
            "import edgeslim.plugin.quantization\n"
            "assert logging.getLogger('torch.utils._pytree').filters == []\n"
            "from edgeslim.exporters.tflite import _require\n"
            "_require('litert_torch')\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr
    assert KERNEL_PREFERENCE not in proc.stderr and "absl::InitializeLog" not in proc.stderr
    assert "oneDNN custom operations" not in proc.stderr


def test_quiet_imports_of_a_loaded_module_captures_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    with quiet_imports("os"):
        os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on.\n")
    assert "oneDNN" in capfd.readouterr().err  # os was imported already: nothing to silence
