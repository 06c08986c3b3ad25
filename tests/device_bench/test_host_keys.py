"""Host-key trust that pins what the user saw: the unknown-key error and ``edgeslim device trust``.

Everything runs against the real sshd of the ``sshd`` fixture (non-default port: ``[127.0.0.1]:port``).
"""

from __future__ import annotations

import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from bench_fixtures import SshServer, keygen

from edgeslim.device_bench import bench
from edgeslim.device_bench.errors import DeviceConfigError, FingerprintMismatchError, HostKeyError
from edgeslim.device_bench.setup import check, trust
from edgeslim.device_bench.targets.hostkeys import parse_fingerprint

WRONG = "SHA256:" + "A" * 43


def _fingerprint(pub: Path) -> str:
    """The fingerprint as the user reads it on the device: ``ssh-keygen -lf``."""
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeslim.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, check=False)


def _advice(message: str) -> list[str]:
    """The ``edgeslim device trust ...`` command an error message prints, as argv."""
    cmd = shlex.split("edgeslim device trust " + message.split("edgeslim device trust ", 1)[1])
    return cmd[1:]


def test_unknown_key_error_shows_key_and_trust_command_then_following_it_works(
        sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    known = tmp_path / "ssh" / "known_hosts"  # neither the file nor its folder exist yet
    fp = _fingerprint(sshd.dir / "host_key.pub")
    with pytest.raises(HostKeyError) as info:
        bench(models["small"], sshd.url, options=sshd.options(known_hosts=str(known)))
    msg = str(info.value)
    assert f"ssh-ed25519 {fp}" in msg and "ssh-keyscan" not in msg
    assert f"edgeslim device trust {sshd.url} --fingerprint {fp} --known-hosts {known}" in msg
    assert not known.exists()  # never auto-trusted
    proc = _cli(*_advice(msg), cwd=tmp_path)  # follow the advice verbatim
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    assert known.read_text() == f"[127.0.0.1]:{sshd.port} {sshd.host_pub}\n"
    report = bench(models["small"], sshd.url, runs=2, options=sshd.options(tmp_path / "wd", known_hosts=str(known)))
    assert report.results[0].status == "ok"
    proc = _cli(*_advice(msg), cwd=tmp_path)  # again: nothing is written twice
    assert proc.returncode == 0 and "already trusted" in proc.stderr
    assert known.read_text().count("ssh-ed25519") == 1


def test_wrong_fingerprint_writes_nothing_and_shows_both(sshd: SshServer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("other.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB1dtpmW7zrl7jTKcO5oKgNoBtFTAgHj1uUHG3u6uW0u\n")
    before = known.read_bytes()
    fp = _fingerprint(sshd.dir / "host_key.pub")
    proc = _cli("device", "trust", sshd.url, "--fingerprint", WRONG, "--known-hosts", str(known), cwd=tmp_path)
    err = " ".join(proc.stderr.split())
    assert proc.returncode != 0 and "FingerprintMismatchError" in err
    assert WRONG in err and fp in err and "nothing was written" in err
    assert known.read_bytes() == before
    missing = tmp_path / "none" / "known_hosts"
    with pytest.raises(FingerprintMismatchError):
        trust(sshd.url, WRONG, sshd.options(known_hosts=str(missing)))
    assert not missing.exists() and not missing.parent.exists()


def test_trust_hashed_and_by_devices_name_then_check_connects(sshd: SshServer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_bytes(b"# no newline at the end")
    devices = tmp_path / "devices.toml"
    devices.write_text(f'[devices.box]\nhost = "127.0.0.1"\nuser = "{sshd.user}"\nport = {sshd.port}\n'
                       f'identity = "{sshd.key}"\nknown_hosts = "{known}"\npython = "{sys.executable}"\n'
                       f'workdir = "{tmp_path / "wd"}"\n')
    fp = _fingerprint(sshd.dir / "host_key.pub")
    proc = _cli("device", "check", "box", "--devices", str(devices), cwd=tmp_path)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and f"edgeslim device trust box --fingerprint {fp}" in err, err
    proc = _cli("device", "trust", "box", "--devices", str(devices), "--fingerprint", fp, "--hash", "--json",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = known.read_text().splitlines()
    assert lines[0] == "# no newline at the end" and len(lines) == 2
    host_field, key = lines[1].split(" ", 1)
    assert host_field.startswith("|1|") and key == sshd.host_pub and "127.0.0.1" not in host_field
    result = trust("box", fp.rstrip("=") + "=", sshd.options(devices_file=str(devices), known_hosts=None))
    assert not result.written and result.host == f"[127.0.0.1]:{sshd.port}"  # hashed entry found: no duplicate
    assert len(known.read_text().splitlines()) == 2
    info = check("box", sshd.options(devices_file=str(devices), known_hosts=None, workdir=None, python=None))
    assert info["python_executable"] == sys.executable


def test_trust_refuses_to_add_beside_a_changed_key(sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    fake = keygen(tmp_path / "fake_host")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(Path(f'{fake}.pub').read_text().split()[:2])}\n")
    before = known.read_bytes()
    fp = _fingerprint(sshd.dir / "host_key.pub")
    with pytest.raises(HostKeyError, match=r"HOST KEY CHANGED.*ssh-keygen -R.*edgeslim device trust") as info:
        bench(models["small"], sshd.url, options=sshd.options(known_hosts=str(known)))
    assert fp in str(info.value)
    with pytest.raises(HostKeyError, match="already has a different ssh-ed25519 key") as info:
        trust(sshd.url, fp, sshd.options(known_hosts=str(known)))
    assert _fingerprint(Path(f"{fake}.pub")) in str(info.value) and "ssh-keygen -R" in str(info.value)
    assert known.read_bytes() == before


@pytest.mark.parametrize("text", ["MD5:aa:bb", "SHA256:short", "sha256:" + "A" * 43, "SHA256:" + "!" * 43])
def test_fingerprint_format_is_checked(text: str) -> None:
    with pytest.raises(DeviceConfigError, match="not an OpenSSH SHA256 fingerprint"):
        parse_fingerprint(text)
    assert parse_fingerprint(WRONG + "=") == WRONG


def test_trust_local_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeviceConfigError, match="not an SSH device"):
        trust("local", WRONG)
