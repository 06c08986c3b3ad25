"""An emulated aarch64 board for the ``device`` tests: a Debian arm64 rootfs run by qemu-user.

The rootfs is built once with ``mmdebstrap --variant=extract`` and aarch64 wheels of numpy,
onnxruntime and ai-edge-litert installed from the host with ``pip install --target --platform``;
it is cached under ``~/.cache/edgeslim/`` (``EDGESLIM_ROOTFS_CACHE``, else ``EDGESLIM_CACHE``, overrides). Its own sshd runs
through ``chroot`` inside a network namespace reached over a veth pair. Every process started
here is stopped by PID; mounts and the namespace are removed on stop.

Run ``python tests/device_bench/emulated_device.py build`` to build the cache by hand.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOTFS_VERSION = "1"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = "python3,libstdc++6,openssh-server,bash,dash,coreutils,base-passwd,base-files,grep,sed"
WHEELS = ("numpy==2.4.6", "onnxruntime==1.32.0", "ai-edge-litert==2.3.0")
PY_TAG = "3.11"
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64")
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
USER = "pi"

SSHD_CONFIG = """Port 22
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile /etc/ssh/authorized_keys/%u
StrictModes no
PidFile none
UseDNS no
Subsystem sftp internal-sftp
LogLevel ERROR
"""


def cache_dir() -> Path:
    """Where the built rootfs is kept between runs: ``$EDGESLIM_ROOTFS_CACHE`` (set per xdist worker by
    tests/conftest.py, which gives each worker its own ``$EDGESLIM_CACHE``), else ``$EDGESLIM_CACHE``."""
    env = os.environ.get("EDGESLIM_ROOTFS_CACHE") or os.environ.get("EDGESLIM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edgeslim"


def missing_tools() -> list[str]:
    """Host tools the emulated device needs that are not installed."""
    tools = ("mmdebstrap", "qemu-aarch64-static", "ip", "chroot", "ssh-keygen", "mount")
    return [t for t in tools if shutil.which(t) is None]


def ensure_binfmt() -> None:
    """Mount binfmt_misc and register qemu-aarch64 (with the F flag) if not done yet."""
    if not (BINFMT_DIR / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], check=True)
    if not (BINFMT_DIR / "qemu-aarch64").exists():
        (BINFMT_DIR / "register").write_text(BINFMT_CONF.read_text().strip())


def interpreter_into(root: Path) -> None:
    """If qemu-aarch64 was registered without the F flag (by someone else), put its interpreter in the rootfs."""
    entry = (BINFMT_DIR / "qemu-aarch64").read_text().splitlines()
    fields = dict(line.split(" ", 1) for line in entry if " " in line)
    if "F" not in fields.get("flags:", ""):
        interp = fields["interpreter"].strip()
        dest = root / interp.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(interp), dest)


def _run(cmd: list[str], **kw: object) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def build_rootfs() -> Path:
    """Build (or reuse) the cached arm64 rootfs and return its path."""
    root = cache_dir() / f"arm64-rootfs-v{ROOTFS_VERSION}"
    marker = root / ".edgeslim-ready"
    if marker.exists():
        return root
    ensure_binfmt()
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    _run(["mmdebstrap", "--quiet", "--arch=arm64", "--variant=extract", f"--include={PACKAGES}", SUITE, str(tmp), MIRROR],
         stdin=subprocess.DEVNULL)
    etc = tmp / "etc"
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n"
        f"{USER}:x:1000:1000:{USER}:/home/{USER}:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    (etc / "group").write_text(f"root:x:0:\nnogroup:x:65534:\n{USER}:x:1000:\n")
    (etc / "shadow").write_text(f"root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n{USER}:*:19000:0:99999:7:::\n")
    (etc / "shadow").chmod(0o640)
    home = tmp / "home" / USER
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, 1000, 1000)
    (tmp / "run" / "sshd").mkdir(parents=True, exist_ok=True)
    (tmp / "root").mkdir(exist_ok=True)
    (etc / "ssh" / "authorized_keys").mkdir(parents=True, exist_ok=True)
    key = etc / "ssh" / "ssh_host_ed25519_key"
    key.unlink(missing_ok=True)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    (etc / "ssh" / "sshd_config_edgeslim").write_text(SSHD_CONFIG)
    (etc / "hostname").write_text("edgeslim-arm64\n")
    site = tmp / "usr" / "local" / "lib" / f"python{PY_TAG}" / "dist-packages"
    site.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--target", str(site)]
    for plat in PLATFORMS:
        pip += ["--platform", plat]
    pip += ["--python-version", PY_TAG, "--implementation", "cp", "--abi", "cp311", "--only-binary=:all:", *WHEELS]
    env = dict(os.environ, PIP_CONSTRAINT="", PIP_FIND_LINKS="")
    _run(pip, env=env)
    (tmp / ".edgeslim-ready").write_text("ok\n")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


@dataclass
class EmulatedDevice:
    """A running emulated board: sshd at ``host:22`` inside netns ``netns``."""

    root: Path
    tag: str
    host: str = ""
    port: int = 22
    user: str = USER
    netns: str = ""
    _proc: subprocess.Popen[bytes] | None = None
    _mounts: list[Path] = field(default_factory=list)
    _veth: str = ""
    _config: str = "/etc/ssh/sshd_config_edgeslim"

    def start(self, authorized_key: str) -> None:
        """Mount /proc and /dev, create the namespace and start sshd; wait until it answers."""
        ensure_binfmt()
        interpreter_into(self.root)
        # this board's own keys folder and sshd config: boards of other test processes share the rootfs
        keys = self.root / "etc" / "ssh" / "authorized_keys" / f"board{self.tag}"
        keys.mkdir(parents=True, exist_ok=True)
        (keys / self.user).write_text(authorized_key)
        (keys / "root").write_text(authorized_key)
        self._config = f"/etc/ssh/sshd_config_edgeslim_{self.tag}"
        (self.root / self._config.lstrip("/")).write_text(
            SSHD_CONFIG.replace("/etc/ssh/authorized_keys/%u", f"/etc/ssh/authorized_keys/board{self.tag}/%u"))
        for src, dst, args in (("proc", "proc", ["-t", "proc"]), ("/dev", "dev", ["--bind"])):
            target = self.root / dst
            target.mkdir(exist_ok=True)
            subprocess.run(["mount", *args, src, str(target)], check=True)
            self._mounts.append(target)
        n = self.tag
        self.netns, self._veth = f"esdev{n}", f"esh{n}"
        subnet = _free_subnet(int(n))
        self.host = f"10.213.{subnet}.2"
        for cmd in (["ip", "netns", "add", self.netns],
                    ["ip", "link", "add", self._veth, "type", "veth", "peer", "name", f"esd{n}"],
                    ["ip", "link", "set", f"esd{n}", "netns", self.netns],
                    ["ip", "addr", "add", f"10.213.{subnet}.1/30", "dev", self._veth],
                    ["ip", "link", "set", self._veth, "up"],
                    ["ip", "-n", self.netns, "addr", "add", f"{self.host}/30", "dev", f"esd{n}"],
                    ["ip", "-n", self.netns, "link", "set", f"esd{n}", "up"],
                    ["ip", "-n", self.netns, "link", "set", "lo", "up"]):
            subprocess.run(cmd, check=True)
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "chroot", str(self.root),
             "/usr/sbin/sshd", "-D", "-e", "-f", self._config],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"emulated sshd exited: {err}")
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as s:
                    s.settimeout(20)
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("emulated sshd did not answer within 60 s")

    def host_key_line(self) -> str:
        """The known_hosts line of this device's host key."""
        pub = (self.root / "etc" / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()
        return f"{self.host} {pub[0]} {pub[1]}\n"

    def stop(self) -> None:
        """Stop sshd and its sessions (by PID/process group), unmount, delete the namespace."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
                self._proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
        for pid in _pids_under(self.root, self.netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._veth:
            subprocess.run(["ip", "link", "del", self._veth], check=False, stderr=subprocess.DEVNULL)
        if self.netns:
            subprocess.run(["ip", "netns", "del", self.netns], check=False)
        for target in reversed(self._mounts):
            subprocess.run(["umount", "-l", str(target)], check=False)
        self._mounts.clear()
        if self.tag:
            shutil.rmtree(self.root / "etc" / "ssh" / "authorized_keys" / f"board{self.tag}", ignore_errors=True)
            (self.root / self._config.lstrip("/")).unlink(missing_ok=True)


def _free_subnet(tag: int) -> int:
    """A third octet in 10.213.200-249 that no host interface uses yet (from ``tag``'s own slot on)."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    for i in range(50):
        subnet = 200 + (tag + i) % 50
        if f" 10.213.{subnet}." not in used:
            return subnet
    raise RuntimeError("no free 10.213.200-249.0/30 subnet for the emulated device")


def _pids_under(root: Path, netns: str) -> list[int]:
    """PIDs of this board's leftover sessions: root directory ``root`` and network namespace ``netns``."""
    try:
        ns = os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return []
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.readlink(d / "root") == str(root) and os.stat(d / "ns" / "net").st_ino == ns:
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


if __name__ == "__main__":
    t0 = time.monotonic()
    print(build_rootfs(), f"{time.monotonic() - t0:.1f} s")
