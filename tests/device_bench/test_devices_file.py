"""The TOML devices file: parsing, errors, and ``--target NAME`` reaching the real sshd."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_fixtures import SshServer

from edgeslim.device_bench import TargetOptions, bench, resolve_target
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
    target = resolve_target("pi4", TargetOptions(devices_file=str(f)))
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
    report = bench(models["small"], "box", runs=3, options=TargetOptions(devices_file=str(f), allow_agent=False))
    assert report.target == f"ssh://{sshd.user}@127.0.0.1:{sshd.port}" and report.results[0].p50
