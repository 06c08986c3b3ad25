"""The ``ssh://user@host:port`` device (paramiko), with strict host-key checking.

An unknown or changed host key is an error that shows the key's fingerprint and the
``edgeslim device trust`` command that pins exactly that key; nothing is ever added to
known_hosts automatically. Every command argument is ``shlex.quote``-d. Commands that print
nothing for longer than the idle timeout are abandoned with :class:`DeviceIdleTimeoutError`.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import posixpath
import shlex
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from edgeslim.device_bench.errors import (
    DeviceAuthError,
    DeviceConfigError,
    DeviceDisconnectedError,
    DeviceDiskFullError,
    DeviceError,
    DeviceIdleTimeoutError,
    DeviceTimeoutError,
    DeviceUnreachableError,
    HostKeyError,
    UnsafeDeleteError,
)
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
from edgeslim.device_bench.targets.hostkeys import (
    TrustResult,
    fingerprint,
    known_hosts_name,
    reject_unknown_policy,
    trust_hint,
    trust_host_key,
)


class SshDevice:
    """A board reached over SSH.

    Args:
        host: Host name or address.
        port: TCP port.
        user: Login name (default: the local user).
        options: Identity, known_hosts, python, workdir, timeouts.
        name: How the user named the device (a devices-file name), for the commands errors print.
    """

    def __init__(self, host: str, port: int, user: str | None, options: DeviceOptions, name: str | None = None) -> None:
        self.host, self.port, self.user, self.options = host, port, user or getpass.getuser(), options
        self.known_hosts = os.path.expanduser(options.known_hosts or "~/.ssh/known_hosts")
        self.description = f"ssh://{self.user}@{host}:{port}"
        self.spec = name or self.description

    def connect(self) -> Connection:
        import paramiko

        client = paramiko.SSHClient()
        if os.path.exists(self.known_hosts):
            client.load_host_keys(self.known_hosts)
        client.set_missing_host_key_policy(reject_unknown_policy(self.spec, self.known_hosts, self._devices_file()))
        t = self.options.connect_timeout_s()
        identity = os.path.expanduser(self.options.identity) if self.options.identity else None
        if identity and not os.path.exists(identity):
            raise DeviceConfigError(f"identity file {identity} does not exist")
        where = self.description
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
            name = known_hosts_name(self.host, self.port)
            raise HostKeyError(
                f"HOST KEY CHANGED for {where}: {self.known_hosts} has {fingerprint(exc.expected_key)} but the "
                f"server offered {exc.key.get_name()} {fingerprint(exc.key)}. This may be an attack or a "
                f"reinstalled board. If you are sure, remove the old key with: ssh-keygen -R {shlex.quote(name)} "
                f"-f {shlex.quote(self.known_hosts)}, compare the new fingerprint with the device's own (on its "
                "console: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) and trust it with: "
                f"{trust_hint(self.spec, exc.key, self.known_hosts, self._devices_file())}") from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            key = identity or "your ssh-agent / default keys"
            raise DeviceAuthError(
                f"authentication failed for {where} with {key}: {exc}. Put the public key on the device with: "
                f"ssh-copy-id -i {shlex.quote((identity or '~/.ssh/id_ed25519') + '.pub')} -p {self.port} "
                f"{shlex.quote(self.user + '@' + self.host)}") from exc
        except (EOFError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
            # the server hung up during the handshake: paramiko's EOFError, or a reset when it closed with our
            # bytes unread (which of the two depends on timing)
            client.close()
            raise DeviceError(f"{where} closed the connection during the SSH handshake: its sshd dropped it (too "
                              "many connections at once (MaxStartups), an overloaded board, or a firewall); check "
                              "the board's sshd log and try again") from exc
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
        try:
            return SshConnection(client, self)
        except DeviceError:
            client.close()
            raise
        except (paramiko.SSHException, EOFError, OSError) as exc:  # e.g. no SFTP server (dropbear without sftp-server)
            client.close()
            raise DeviceError(f"{where} accepted the login but no SFTP session could be opened ({type(exc).__name__}: "
                              f"{exc}); edgeslim uploads over SFTP: enable it on the board (OpenSSH: 'Subsystem sftp "
                              "internal-sftp' in sshd_config; dropbear: install openssh-sftp-server)") from exc

    def trust(self, expected: str, hashed: bool = False) -> TrustResult:
        """Pin this device's host key in its known_hosts file, only if its fingerprint is ``expected``.

        Raises:
            FingerprintMismatchError: The device offers no key with that fingerprint; nothing is written.
        """
        t = self.options.connect_timeout_s()
        return trust_host_key(self.description, self.host, self.port, self.known_hosts, expected,
                              lambda: self._open_socket(t), t, hashed)

    def _devices_file(self) -> str | None:
        return self.options.devices_file if self.spec != self.description else None

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


def remote_workdir(workdir: str | None, home: str) -> str:
    """The absolute work dir on the device: ``~`` and relative paths are taken from the login's ``home``.

    Raises:
        DeviceConfigError: ``~user`` paths (other users' homes) are not supported.
    """
    wd = workdir or DEFAULT_WORKDIR
    if wd == "~" or wd.startswith("~/"):
        wd = home + wd[1:]
    elif wd.startswith("~"):
        raise DeviceConfigError(f"work dir {wd!r}: ~user paths are not supported; give an absolute path or one "
                                "relative to the login's home")
    return posixpath.normpath(posixpath.join(home, wd))


class SshConnection:
    """An open SSH + SFTP session."""

    def __init__(self, client: Any, device: SshDevice) -> None:
        self.client = client
        self.device = device
        self.description = device.description
        self.python = device.options.python or "python3"
        self.idle_timeout = device.options.idle_timeout_s()
        self.sftp = client.open_sftp()
        self.sftp.get_channel().settimeout(self.idle_timeout)
        with self._sftp_op("resolving the work dir"):
            self._workdir = remote_workdir(device.options.workdir, self.sftp.normalize("."))
            self._mkdirs(self._workdir)
            self._real_workdir = self.sftp.normalize(self._workdir)

    @contextlib.contextmanager
    def _sftp_op(self, what: str) -> Iterator[None]:
        """Turn an SFTP request that got no answer within the idle timeout into :class:`DeviceIdleTimeoutError`."""
        try:
            yield
        except DeviceError:
            raise
        except TimeoutError as exc:
            raise DeviceIdleTimeoutError(
                f"{self.description} did not answer for {self.idle_timeout:g} s while {what} (idle timeout): the "
                "board may be wedged or its disk stuck; check it (ssh in, reboot it if it does not answer), or raise "
                "--idle-timeout (devices file: idle_timeout) for a slow link") from exc

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

    def make_dir(self, name: str) -> str:
        check_dir_name(name)
        path = f"{self._workdir}/{name}"
        with self._sftp_op(f"creating {path}"):
            try:
                self.sftp.mkdir(path)
            except OSError as exc:
                raise DeviceError(f"cannot create {path} on {self.description} (edgeslim only uses folders it "
                                  f"creates itself; remove it or pick another --workdir): {exc}") from exc
            with self.sftp.open(f"{path}/{OWNED_MARKER}", "w") as f:
                f.write(b"created by edgeslim; deleted by edgeslim when done\n")
        return path

    def stage(self, local: Path, name: str) -> str:
        remote = f"{self._workdir}/{name}"
        parent = remote.rsplit("/", 1)[0]
        size = Path(local).stat().st_size
        with self._sftp_op(f"uploading {Path(local).name} to {parent}"):
            self._mkdirs(parent)
            try:
                self.sftp.put(str(local), remote)
            except TimeoutError:
                raise
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
        rc = self._exec(cmd, out.append, cmd)
        if rc != 0 or len(out) < 2:
            raise DeviceError(f"cannot read free disk space on {self.description} ({cmd}): {' '.join(out)}")
        return int(out[-1].split()[3]) * 1024

    def run(self, argv: list[str], on_line: LineHandler, env: dict[str, str] | None = None,
            waiting: WaitingProbe | None = None) -> int:
        assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        cmd = f"cd {shlex.quote(self._workdir)} && {assigns + ' ' if assigns else ''}exec " + shlex.join(argv)
        return self._exec(cmd, on_line, shlex.join(argv), waiting)

    def _exec(self, cmd: str, on_line: LineHandler, what: str, waiting: WaitingProbe | None = None) -> int:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise DeviceDisconnectedError(f"the connection to {self.description} is closed")
        import paramiko

        try:
            chan = transport.open_session()
            chan.set_combine_stderr(True)
            chan.exec_command(cmd)
        except paramiko.SSHException as exc:
            raise DeviceDisconnectedError(f"cannot start {what!r} on {self.description}: {exc}") from exc
        buf, limit, last = b"", self.idle_timeout, time.monotonic()
        try:
            while True:
                chan.settimeout(None if limit is None else max(0.01, limit - (time.monotonic() - last)))
                try:
                    data = chan.recv(65536)
                except TimeoutError:
                    if waiting is not None and waiting():
                        last = time.monotonic()
                        continue
                    chan.close()
                    raise self._idle_error(what) from None
                if not data:
                    break
                last = time.monotonic()
                *lines, buf = (buf + data).split(b"\n")
                for line in lines:
                    on_line(line.decode("utf-8", "replace"))
        except DeviceError:
            raise
        except (OSError, EOFError) as exc:
            raise DeviceDisconnectedError(f"connection to {self.description} lost during {what!r}: {exc}") from exc
        if buf:
            on_line(buf.decode("utf-8", "replace"))
        if not chan.exit_status_ready() and not transport.is_active():
            raise DeviceDisconnectedError(f"connection to {self.description} dropped before {what!r} finished")
        status = chan.recv_exit_status()
        chan.close()
        if status == -1:
            raise DeviceDisconnectedError(f"connection to {self.description} dropped before {what!r} finished "
                                          "(no exit status)")
        return int(status)

    def _idle_error(self, what: str) -> DeviceIdleTimeoutError:
        shown = what if len(what) <= 300 else what[:300] + "..."
        return DeviceIdleTimeoutError(
            f"{self.description} ({self.device.host}) printed nothing for {self.idle_timeout:g} s while running "
            f"{shown!r} (idle timeout); abandoned. The board may be wedged or the command stuck: check it (ssh in; "
            f"a stuck python may still hold {self._workdir}/bench.lock; reboot it if it does not answer), or raise "
            "--idle-timeout (devices file: idle_timeout; 0 turns the check off) if the model is just slow")

    def remove(self, path: str) -> None:
        with self._sftp_op(f"deleting {path}"):
            try:
                real = self.sftp.normalize(path)  # the server resolves ``..`` and symbolic links
                roots = [self._real_workdir]
            except FileNotFoundError:  # nothing there to delete, but still say so for a path outside
                real, roots = posixpath.normpath(path), [self._real_workdir, self._workdir]
            if not any(real.startswith(root.rstrip("/") + "/") for root in roots):
                raise UnsafeDeleteError(
                    f"refusing to delete {path} on {self.description}: it resolves to {real}, which is not inside "
                    f"edgeslim's work dir {self._real_workdir}; edgeslim deletes only what it created there")
            try:
                st = self.sftp.lstat(path)
            except FileNotFoundError:
                return
            owned = False
            if stat.S_ISDIR(st.st_mode or 0):
                with contextlib.suppress(FileNotFoundError):
                    owned = stat.S_ISREG(self.sftp.lstat(f"{real}/{OWNED_MARKER}").st_mode or 0)
            if not owned:
                raise UnsafeDeleteError(
                    f"refusing to delete {path} on {self.description}: it was not created by edgeslim (not a "
                    f"folder holding {OWNED_MARKER}); delete it yourself if it is yours to delete")
            self._rmtree(real)

    def _rmtree(self, path: str) -> None:
        """Delete ``path`` and what is in it; symbolic links are deleted, never followed."""
        for entry in self.sftp.listdir_attr(path):
            child = f"{path}/{entry.filename}"
            if stat.S_ISDIR(entry.st_mode or 0):
                self._rmtree(child)
            else:
                self.sftp.remove(child)
        self.sftp.rmdir(path)

    def close(self) -> None:
        try:
            self.sftp.close()
        finally:
            self.client.close()


@DEVICE_KINDS.register("ssh")
def _ssh(spec: str, options: DeviceOptions) -> SshDevice:
    parts = urlsplit(spec)
    if parts.scheme != "ssh" or not parts.hostname:
        raise DeviceConfigError(f"bad SSH target {spec!r}; expected ssh://user@host:port")
    try:
        port = parts.port or 22
    except ValueError as exc:
        raise DeviceConfigError(f"bad port in SSH target {spec!r}") from exc
    return SshDevice(parts.hostname, port, unquote(parts.username) if parts.username else None, options)
