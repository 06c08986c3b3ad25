"""The TOML devices file: parsing, errors, and ``--target NAME`` reaching the real sshd."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench_fixtures import SshServer

from edgeslim.device_bench import DeviceOptions, bench, resolve_device
from edgeslim.device_bench.devices import load_devices, lookup
from edgeslim.device_bench.errors import DeviceConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devices.toml"
    path.write_text(text)
    return path


def test_parse_and_lookup(tmp_path: Path) -> None:
    f = _write(tmp_path, '[devices.pi4]\nhost = "10.0.0.5"\nuser = "pi"\nport = 2222\npython = "python3.11"\n'
                         '[devices.jetson]\nhost = "jet"\n')
    devs = load_devices(f)
    assert sorted(devs) == ["jetson", "pi4"]
    assert devs["pi4"].url() == "ssh://pi@10.0.0.5:2222" and devs["jetson"].port == 22
    target = resolve_device("pi4", DeviceOptions(devices_file=str(f)))
    assert target.description == "ssh://pi@10.0.0.5:2222"


@pytest.mark.parametrize(("text", "match"), [
    ('[devices.x]\nuser = "pi"\n', "'host' is required"),
    ('[devices.x]\nhost = "h"\nbogus = 1\n', "unknown keys"),
    ("[devices.x\n", "devices file"),
])
def test_bad_files(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(DeviceConfigError, match=match):
        load_devices(_write(tmp_path, text))


def test_unknown_name_lists_known(tmp_path: Path) -> None:
    f = _write(tmp_path, '[devices.pi4]\nhost = "h"\n')
    with pytest.raises(DeviceConfigError, match=r"unknown target 'pi5'.*known: pi4"):
        lookup("pi5", f)


def test_bench_by_device_name(sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    f = _write(tmp_path, f'[devices.box]\nhost = "127.0.0.1"\nuser = "{sshd.user}"\nport = {sshd.port}\n'
                         f'identity = "{sshd.key}"\nknown_hosts = "{sshd.known_hosts}"\npython = "{sshd.options().python}"\n'
                         f'workdir = "{tmp_path / "remote"}"\n')
    report = bench(models["small"], "box", runs=3, options=DeviceOptions(devices_file=str(f), allow_agent=False))
    assert report.target == f"ssh://{sshd.user}@127.0.0.1:{sshd.port}" and report.results[0].p50


def test_merge_precedence_flag_over_file_over_default(tmp_path: Path) -> None:
    f = _write(tmp_path, '[devices.pi]\nhost = "h"\nconnect_timeout = 30\nidle_timeout = 60\npython = "py-file"\n'
                         'workdir = "wd-file"\n')
    given = DeviceOptions(devices_file=str(f), connect_timeout=1.5, python="py-flag")
    dev = resolve_device("pi", given)
    opts = dev.options  # type: ignore[attr-defined]
    assert opts.connect_timeout_s() == 1.5 and opts.python == "py-flag"  # flag beats file
    assert opts.idle_timeout_s() == 60 and opts.workdir == "wd-file"  # file beats default
    bare = resolve_device("ssh://u@h:22", DeviceOptions()).options  # type: ignore[attr-defined]
    assert bare.connect_timeout_s() == 10 and bare.idle_timeout_s() == 300  # defaults
    assert DeviceOptions(idle_timeout=0).idle_timeout_s() is None  # 0: no limit
    with pytest.raises(DeviceConfigError, match="connect timeout"):
        DeviceOptions(connect_timeout=0)
    with pytest.raises(DeviceConfigError, match="connect_timeout must be a number"):
        load_devices(_write(tmp_path, '[devices.x]\nhost = "h"\nconnect_timeout = "10"\n'))


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP listener that accepts connections and never speaks SSH."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


def _check(devices: Path, *flags: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "edgeslim.cli", "device", "check", "slow", "--devices", str(devices),
                           *flags], capture_output=True, text=True, timeout=120, check=False)
    return proc, time.monotonic() - t0


def test_cli_connect_timeout_flag_beats_devices_file(silent_port: int, tmp_path: Path) -> None:
    """The bug: a devices-file ``connect_timeout`` overrode ``--connect-timeout``."""
    f = _write(tmp_path, f'[devices.slow]\nhost = "127.0.0.1"\nport = {silent_port}\nconnect_timeout = 30\n')
    proc, elapsed = _check(f, "--connect-timeout", "1.5")
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "DeviceTimeoutError" in err and "within 1.5 s" in err, err
    assert elapsed < 25  # not the file's 30 s
    f.write_text(f'[devices.slow]\nhost = "127.0.0.1"\nport = {silent_port}\nconnect_timeout = 1.5\n')
    proc, _ = _check(f)  # no flag: the file's value, not the default of 10 s
    assert proc.returncode == 2 and "within 1.5 s" in " ".join(proc.stderr.split())
