"""Host keys: OpenSSH fingerprints, the key a server offers, and pinning it in known_hosts.

Nothing is trusted automatically: :func:`trust_host_key` writes the key the server offers only if
its fingerprint equals the one the user read on the device (``ssh-keygen -lf`` there, or the one
edgeslim's unknown-host-key error showed).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import shlex
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeslim.device_bench.errors import DeviceConfigError, DeviceError, FingerprintMismatchError, HostKeyError

#: Host-key algorithms tried one by one when the default key does not match the fingerprint.
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "rsa-sha2-512")
#: Signature algorithm -> the key's own name where they differ.
_KEY_NAME = {"rsa-sha2-512": "ssh-rsa"}


def fingerprint(key: Any) -> str:
    """OpenSSH-style ``SHA256:<base64 without padding>`` fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_fingerprint(text: str) -> str:
    """Normalise a user-given ``SHA256:...`` fingerprint (padding ``=`` optional).

    Raises:
        DeviceConfigError: Not an OpenSSH SHA256 fingerprint.
    """
    algo, _, b64 = text.strip().partition(":")
    b64 = b64.rstrip("=")
    try:
        ok = algo == "SHA256" and len(base64.b64decode(b64 + "=", validate=True)) == 32
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise DeviceConfigError(f"{text!r} is not an OpenSSH SHA256 fingerprint (SHA256: and 43 base64 characters, "
                                "as printed by ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on the device)")
    return f"SHA256:{b64}"


def known_hosts_name(host: str, port: int) -> str:
    """The host field OpenSSH uses in known_hosts: ``host`` on port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def trust_hint(spec: str, key: Any, known_hosts: str, devices_file: str | None) -> str:
    """The ``edgeslim device trust`` command that pins exactly ``key``."""
    cmd = f"edgeslim device trust {shlex.quote(spec)} --fingerprint {fingerprint(key)}"
    if os.path.abspath(known_hosts) != os.path.abspath(os.path.expanduser("~/.ssh/known_hosts")):
        cmd += f" --known-hosts {shlex.quote(known_hosts)}"
    if devices_file:
        cmd += f" --devices {shlex.quote(devices_file)}"
    return cmd


def offered_key(sock: socket.socket, timeout: float, key_type: str | None = None) -> Any:
    """The host key a server proves it holds during key exchange (``key_type``: ask for that algorithm only).

    Raises:
        paramiko.SSHException: The handshake failed (e.g. the server has no key of ``key_type``).
    """
    import paramiko

    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        if key_type is not None:
            transport.get_security_options().key_types = (key_type,)
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    finally:
        transport.close()


@dataclass(frozen=True)
class TrustResult:
    """What :func:`trust_host_key` did.

    Attributes:
        host: The known_hosts host field (``[host]:port`` for a port other than 22).
        key_type: The pinned key's algorithm.
        fingerprint: Its ``SHA256:`` fingerprint.
        known_hosts: The file.
        written: False when the key was already there (nothing written).
    """

    host: str
    key_type: str
    fingerprint: str
    known_hosts: str
    written: bool


def trust_host_key(where: str, host: str, port: int, known_hosts: str, expected: str,
                   open_socket: Callable[[], socket.socket], timeout: float, hashed: bool = False) -> TrustResult:
    """Pin the host key of ``host:port`` in ``known_hosts`` if its fingerprint is ``expected``.

    Args:
        where: The device, for messages.
        host: Host name or address as used to connect.
        port: TCP port.
        known_hosts: The known_hosts file (created with mode 0600 if missing).
        expected: The ``SHA256:...`` fingerprint the user verified.
        open_socket: Opens a new TCP connection to the device.
        timeout: Seconds for each SSH handshake.
        hashed: Write the host name hashed (``|1|...``, as OpenSSH's HashKnownHosts).

    Raises:
        FingerprintMismatchError: No key the device offers has ``expected``; nothing is written.
        HostKeyError: known_hosts already holds a different key of that type for the host.
    """
    import paramiko

    want = parse_fingerprint(expected)
    offered: list[Any] = []
    for key_type in (None, *KEY_TYPES):
        if key_type is not None and any(k.get_name() == _KEY_NAME.get(key_type, key_type) for k in offered):
            continue
        sock = open_socket()  # unreachable / timed out: raises its own DeviceError
        try:
            key = offered_key(sock, timeout, key_type)
        except (paramiko.SSHException, EOFError) as exc:
            if key_type is None:
                raise DeviceError(f"SSH handshake with {where} failed: {exc}") from exc
            continue  # the device has no key of this type
        offered.append(key)
        if fingerprint(key) == want:
            name = known_hosts_name(host, port)
            written = _pin(known_hosts, name, key, hashed)
            return TrustResult(name, key.get_name(), want, known_hosts, written)
    seen = "; ".join(f"{k.get_name()} {fingerprint(k)}" for k in offered)
    raise FingerprintMismatchError(
        f"{where} offers {seen}, but you gave {want}: no match, nothing was written to {known_hosts}. Check the "
        "fingerprint on the device itself (its console: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub); a "
        "different key may mean someone is in the middle")


def _pin(known_hosts: str, name: str, key: Any, hashed: bool) -> bool:
    """Append ``name key`` to ``known_hosts`` unless present; refuse a conflicting key of the same type."""
    import paramiko

    path = Path(known_hosts)
    keys = paramiko.HostKeys()
    if path.exists():
        try:
            keys.load(str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise HostKeyError(f"cannot read {path}: {exc}; fix or move the file") from exc
    known = keys.lookup(name)
    if known is not None and key.get_name() in known:
        old = known[key.get_name()]
        if old.asbytes() == key.asbytes():
            return False
        raise HostKeyError(
            f"{path} already has a different {key.get_name()} key for {name} ({fingerprint(old)}); nothing was "
            f"written. If the device was reinstalled, remove the old key first: ssh-keygen -R {shlex.quote(name)} "
            f"-f {shlex.quote(str(path))}")
    field = paramiko.HostKeys.hash_host(name) if hashed else name
    line = f"{field} {key.get_name()} {key.get_base64()}\n"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if created:
            os.fchmod(fd, 0o600)
        elif path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            line = "\n" + line
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return True


def reject_unknown_policy(spec: str, known_hosts: str, devices_file: str | None) -> Any:
    """A paramiko missing-host-key policy that refuses and prints the key and the trust command."""
    import paramiko

    class RejectUnknown(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            raise HostKeyError(
                f"host key of {hostname} ({key.get_name()} {fingerprint(key)}) is not in {known_hosts} and strict "
                "host-key checking is on. Compare that fingerprint with the device's own (on its console: "
                "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub); if they are equal, trust exactly that key with: "
                f"{trust_hint(spec, key, known_hosts, devices_file)}")

    return RejectUnknown()
