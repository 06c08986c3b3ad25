"""The ``ssh://user@host:port`` target (paramiko), with strict host-key checking.

An unknown or changed host key is an error that says how to trust the key explicitly; nothing
is ever added to known_hosts automatically. Every command argument is ``shlex.quote``-d.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import shlex
import socket
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from edgeslim.device_bench.errors import (
    DeviceAuthError,
    DeviceConfigError,
    DeviceDisconnectedError,
    DeviceDiskFullError,
    DeviceError,
    DeviceTimeoutError,
    DeviceUnreachableError,
    HostKeyError,
)
from edgeslim.device_bench.targets.base import DEFAULT_WORKDIR, TARGET_KINDS, Connection, LineHandler, TargetOptions


def fingerprint(key: Any) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _keyscan_hint(host: str, port: int, known_hosts: str) -> str:
    port_opt = f"-p {port} " if port != 22 else ""
    return (f"ssh-keyscan {port_opt}{shlex.quote(host)} >> {shlex.quote(known_hosts)}   "
            f"(compare the fingerprint first, on the device: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)")


class SshTarget:
    """A board reached over SSH.

    Args:
        host: Host name or address.
        port: TCP port.
        user: Login name (default: the local user).
        options: Identity, known_hosts, python, workdir, timeouts.
    """

    def __init__(self, host: str, port: int, user: str | None, options: TargetOptions) -> None:
        self.host, self.port, self.user, self.options = host, port, user or getpass.getuser(), options
        self.known_hosts = os.path.expanduser(options.known_hosts or "~/.ssh/known_hosts")
        self.description = f"ssh://{self.user}@{host}:{port}"

    def connect(self) -> Connection:
        import paramiko

        client = paramiko.SSHClient()
        if os.path.exists(self.known_hosts):
            client.load_host_keys(self.known_hosts)
        client.set_missing_host_key_policy(_reject_unknown(self))
        t = self.options.connect_timeout
        identity = os.path.expanduser(self.options.identity) if self.options.identity else None
        if identity and not os.path.exists(identity):
            raise DeviceConfigError(f"identity file {identity} does not exist")
        where = f"{self.description}"
        sock = self._open_socket(t)
        t0 = time.monotonic()
        try:
            client.connect(self.host, self.port, self.user, key_filename=identity, timeout=t, banner_timeout=t,
                           auth_timeout=t, allow_agent=self.options.allow_agent, look_for_keys=identity is None,
                           sock=sock)
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            name = f"[{self.host}]:{self.port}" if self.port != 22 else self.host
            raise HostKeyError(
                f"HOST KEY CHANGED for {where}: {self.known_hosts} has {fingerprint(exc.expected_key)} but the "
                f"server offered {exc.key.get_name()} {fingerprint(exc.key)}. This may be an attack or a "
                f"reinstalled board. If you are sure, remove the old key with: ssh-keygen -R {shlex.quote(name)} "
                f"-f {shlex.quote(self.known_hosts)} and trust the new one with: "
                f"{_keyscan_hint(self.host, self.port, self.known_hosts)}") from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            key = identity or "your ssh-agent / default keys"
            raise DeviceAuthError(
                f"authentication failed for {where} with {key}: {exc}. Put the public key on the device with: "
                f"ssh-copy-id -i {shlex.quote((identity or '~/.ssh/id_ed25519') + '.pub')} -p {self.port} "
                f"{shlex.quote(self.user + '@' + self.host)}") from exc
        except (paramiko.SSHException, OSError) as exc:
            client.close()
            if time.monotonic() - t0 >= t * 0.9 or "banner" in str(exc).lower():
                raise DeviceTimeoutError(f"{where} accepted the TCP connection but did not complete the SSH "
                                         f"handshake within {t:g} s (is it an SSH server? raise --connect-timeout "
                                         f"for slow boards): {exc}") from exc
            raise DeviceError(f"SSH to {where} failed: {exc}") from exc
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(5)
        return SshConnection(client, self)

    def _open_socket(self, timeout: float) -> socket.socket:
        """TCP-connect with ``timeout``; refused, unreachable and timed out become clear errors."""
        where = self.description
        try:
            return socket.create_connection((self.host, self.port), timeout=timeout)
        except TimeoutError as exc:
            raise DeviceTimeoutError(f"connecting to {where} timed out after {timeout:g} s (is the board on and "
                                     "reachable? raise --connect-timeout for slow links)") from exc
        except ConnectionRefusedError as exc:
            raise DeviceUnreachableError(f"connection to {where} refused: no SSH server listens on port "
                                         f"{self.port} (start sshd on the device or fix the port)") from exc
        except OSError as exc:
            raise DeviceUnreachableError(f"{where} is unreachable: {exc}") from exc


def _reject_unknown(t: SshTarget) -> Any:
    """A missing-host-key policy that refuses and explains how to trust the key."""
    import paramiko

    class RejectUnknown(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            raise HostKeyError(
                f"host key of {hostname} ({key.get_name()} {fingerprint(key)}) is not in {t.known_hosts} and "
                f"strict host-key checking is on. If this fingerprint is the device's, trust it with: "
                f"{_keyscan_hint(t.host, t.port, t.known_hosts)}")

    return RejectUnknown()


class SshConnection:
    """An open SSH + SFTP session."""

    def __init__(self, client: Any, target: SshTarget) -> None:
        self.client = client
        self.target = target
        self.description = target.description
        self.python = target.options.python or "python3"
        self.sftp = client.open_sftp()
        home = self.sftp.normalize(".")
        wd = target.options.workdir or DEFAULT_WORKDIR
        self._workdir = home + wd[1:] if wd.startswith("~") else wd
        self._mkdirs(self._workdir)

    def _mkdirs(self, path: str) -> None:
        parts = path.strip("/").split("/")
        cur = ""
        for part in parts:
            cur += "/" + part
            try:
                self.sftp.stat(cur)
            except FileNotFoundError:
                try:
                    self.sftp.mkdir(cur)
                except OSError:
                    self.sftp.stat(cur)  # another bench created it meanwhile: fine; else re-raise

    def workdir(self) -> str:
        return self._workdir

    def stage(self, local: Path, name: str) -> str:
        remote = f"{self._workdir}/{name}"
        parent = remote.rsplit("/", 1)[0]
        self._mkdirs(parent)
        size = Path(local).stat().st_size
        try:
            self.sftp.put(str(local), remote)
        except OSError as exc:
            free = self.free_bytes()
            if free < size + 4096:
                raise DeviceDiskFullError(
                    f"disk full on {self.description}: uploading {Path(local).name} ({size} bytes) to {parent} "
                    f"failed with only {free} bytes free. Free space there or pick another --workdir") from exc
            raise DeviceError(f"uploading {local} to {self.description}:{remote} failed: {exc}") from exc
        return remote

    def free_bytes(self) -> int:
        out: list[str] = []
        cmd = f"df -Pk -- {shlex.quote(self._workdir)}"
        rc = self._exec(cmd, out.append)
        if rc != 0 or len(out) < 2:
            raise DeviceError(f"cannot read free disk space on {self.description} ({cmd}): {' '.join(out)}")
        return int(out[-1].split()[3]) * 1024

    def run(self, argv: list[str], on_line: LineHandler, env: dict[str, str] | None = None) -> int:
        assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        cmd = f"cd {shlex.quote(self._workdir)} && {assigns + ' ' if assigns else ''}exec " + shlex.join(argv)
        return self._exec(cmd, on_line)

    def _exec(self, cmd: str, on_line: LineHandler) -> int:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise DeviceDisconnectedError(f"the connection to {self.description} is closed")
        import paramiko

        try:
            chan = transport.open_session()
            chan.set_combine_stderr(True)
            chan.exec_command(cmd)
        except paramiko.SSHException as exc:
            raise DeviceDisconnectedError(f"cannot start {cmd!r} on {self.description}: {exc}") from exc
        buf = b""
        try:
            while True:
                data = chan.recv(65536)
                if not data:
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    on_line(line.decode("utf-8", "replace"))
        except (OSError, EOFError) as exc:
            raise DeviceDisconnectedError(f"connection to {self.description} lost during {cmd!r}: {exc}") from exc
        if buf:
            on_line(buf.decode("utf-8", "replace"))
        if not chan.exit_status_ready() and not transport.is_active():
            raise DeviceDisconnectedError(f"connection to {self.description} dropped before {cmd!r} finished")
        status = chan.recv_exit_status()
        chan.close()
        if status == -1:
            raise DeviceDisconnectedError(f"connection to {self.description} dropped before {cmd!r} finished "
                                          "(no exit status)")
        return int(status)

    def remove(self, path: str) -> None:
        if not path.startswith(self._workdir + "/"):
            raise DeviceError(f"refusing to remove {path}: outside the work dir {self._workdir}")
        st = self.sftp.lstat(path)
        if stat.S_ISDIR(st.st_mode or 0):
            for entry in self.sftp.listdir(path):
                self.remove(f"{path}/{entry}")
            self.sftp.rmdir(path)
        else:
            self.sftp.remove(path)

    def close(self) -> None:
        try:
            self.sftp.close()
        finally:
            self.client.close()


@TARGET_KINDS.register("ssh")
def _ssh(spec: str, options: TargetOptions) -> SshTarget:
    parts = urlsplit(spec)
    if parts.scheme != "ssh" or not parts.hostname:
        raise DeviceConfigError(f"bad SSH target {spec!r}; expected ssh://user@host:port")
    try:
        port = parts.port or 22
    except ValueError as exc:
        raise DeviceConfigError(f"bad port in SSH target {spec!r}") from exc
    return SshTarget(parts.hostname, port, unquote(parts.username) if parts.username else None, options)
