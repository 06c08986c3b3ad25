"""Fixtures and helpers of the device_bench tests (imported by conftest.py): a real OpenSSH sshd on 127.0.0.1 and the emulated aarch64 board.

Both are started by the fixtures and stopped by PID (sessions killed by PID, mounts and network
namespace removed). No SSH mocks.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from emulated_device import EmulatedDevice, build_rootfs, missing_tools
from tiny_models import make_onnx

from edgeslim.device_bench.targets import DeviceOptions

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> Path:
    """A fresh ed25519 key pair at ``path`` / ``path.pub``."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgeslim-test", "-f", str(path)], check=True)
    return path


def wait_banner(host: str, port: int, timeout: float = 30.0) -> None:
    """Wait until an SSH server at host:port sends its banner."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.settimeout(5)
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no SSH banner from {host}:{port}")


def descendants(pid: int) -> list[int]:
    """All descendant PIDs of ``pid`` (children first)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


@dataclass
class SshServer:
    """A running sshd for the tests (login: the current user, i.e. root in CI)."""

    dir: Path
    port: int
    key: Path
    known_hosts: Path
    host_pub: str
    proc: subprocess.Popen[bytes]
    user: str = field(default_factory=getpass.getuser)

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def options(self, workdir: Path | None = None, **kw: object) -> DeviceOptions:
        """Device options: this server's key and known_hosts, the test venv's python on the 'device'."""
        base: dict[str, object] = {"identity": str(self.key), "known_hosts": str(self.known_hosts),
                                   "python": sys.executable, "connect_timeout": 10.0, "allow_agent": False,
                                   "workdir": str(workdir) if workdir else None}
        base.update(kw)
        return DeviceOptions(**base)  # type: ignore[arg-type]

    def kill_sessions(self) -> list[int]:
        """Kill every process under the listener (connections, sessions, agents) by PID: a lost link."""
        pids = descendants(self.proc.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids


def _start_sshd(d: Path) -> SshServer:
    d.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    host_key = keygen(d / "host_key")
    key = keygen(d / "client_key")
    (d / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile none\nAuthorizedKeysFile {d}/authorized_keys\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel ERROR\nMaxStartups 50\n"
        "MaxSessions 50\nUseDNS no\n")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=open(d / "sshd.log", "wb"))  # noqa: SIM115
    wait_banner("127.0.0.1", port)
    pub = Path(f"{host_key}.pub").read_text().split()
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    return SshServer(d, port, key, known, f"{pub[0]} {pub[1]}", proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for pid in descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real OpenSSH server on 127.0.0.1 at a free port, with its own host key, config and keys."""
    if os.geteuid() != 0:
        pytest.skip("the sshd fixture runs as root (as CI does): it logs in as root and mounts a tmpfs")
    if not os.path.exists(SSHD):
        pytest.fail("openssh-server is not installed: bash setup.sh installs .ci/apt-packages.d/device_bench.txt")
    server = _start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    _stop(server.proc)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny ONNX models (``small`` ~20 kB, ``big`` ~0.5 MB) and an inputs .npz (``x``, ``y``)."""
    d = tmp_path_factory.mktemp("models")
    small, net = make_onnx(d / "small.onnx")
    big, _ = make_onnx(d / "big.onnx", hidden=256)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 1, 1, 8, 8)).astype(np.float32).reshape(16, 1, 8, 8)
    import torch

    with torch.no_grad():
        y = net(torch.from_numpy(x)).argmax(1).numpy()
    y[:4] = (y[:4] + 1) % 10  # 4 of 16 labels wrong: top-1 must be exactly 0.75
    np.savez(d / "inputs.npz", x=x, y=y)
    return {"small": small, "big": big, "inputs": d / "inputs.npz"}


@dataclass
class Board:
    """The running emulated aarch64 board and how to reach it."""

    device: EmulatedDevice
    key: Path
    known_hosts: Path
    site: Path

    @property
    def url(self) -> str:
        return f"ssh://{self.device.user}@{self.device.host}:22"

    def options(self, **kw: object) -> DeviceOptions:
        base: dict[str, object] = {"identity": str(self.key), "known_hosts": str(self.known_hosts),
                                   "connect_timeout": 60.0, "allow_agent": False}
        base.update(kw)
        return DeviceOptions(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    """The emulated aarch64 board (Debian arm64 rootfs under qemu-user, sshd in a network namespace)."""
    if os.geteuid() != 0:
        pytest.skip("the emulated device needs root (binfmt_misc, mounts, network namespace), as in CI")
    missing = missing_tools()
    if missing:
        pytest.fail(f"emulated device needs {missing}: bash setup.sh installs .ci/apt-packages.d/device_bench.txt")
    t0 = time.monotonic()
    root = build_rootfs()
    d = tmp_path_factory.mktemp("board")
    key = keygen(d / "key")
    dev = EmulatedDevice(root, tag=str(os.getpid() % 10000))
    try:
        dev.start(Path(f"{key}.pub").read_text())
        known = d / "known_hosts"
        known.write_text(dev.host_key_line())
        print(f"\nemulated device ready at {dev.host} in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        yield Board(dev, key, known, root / "usr" / "local" / "lib" / "python3.11" / "dist-packages")
    finally:
        dev.stop()
