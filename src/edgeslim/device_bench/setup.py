"""``device check`` (what a board has and lacks), ``device setup`` (offline runtime install) and
``device trust`` (pin a host key whose fingerprint the user verified).

``setup`` downloads the device's wheels on the host (``pip download --platform ...``) and the
agent unpacks them on the device into ``WORKDIR/site`` (user-owned, no pip needed there); the
agent puts that folder first on ``sys.path`` for every later bench. Uploads go into a fresh
folder that edgeslim creates and marks for each agent run; only that folder is deleted afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeslim.device_bench.agent_build import agent_file
from edgeslim.device_bench.api import EVENT_PREFIX, EXIT_COMMAND_NOT_FOUND
from edgeslim.device_bench.errors import AgentError, DeviceConfigError, DeviceError, RuntimeMissingError
from edgeslim.device_bench.runtimes import RUNTIMES
from edgeslim.device_bench.targets import Connection, DeviceOptions, resolve_device
from edgeslim.device_bench.targets.hostkeys import TrustResult

#: Below this much free space in the work dir, ``check`` suggests freeing some.
MIN_FREE_BYTES = 200 * 2**20
#: Oldest manylinux glibc minor version that wheels target.
_MANYLINUX_FIRST = 17


def _agent(conn: Connection, args: list[str], files: Sequence[Path] = ()) -> list[dict[str, Any]]:
    """Upload the agent (and ``files``, appended to ``args``), run it with ``args``; return its events.

    Everything is uploaded into a fresh edgeslim-marked folder of the work dir, deleted afterwards.
    Raises on the agent's errors.
    """
    name = f"agent-{uuid.uuid4().hex[:8]}"
    run_dir = conn.make_dir(name)
    agent = conn.stage(agent_file(), f"{name}/agent.py")
    args = [*args, *(conn.stage(f, f"{name}/{f.name}") for f in files)]
    events: list[dict[str, Any]] = []
    tail: list[str] = []

    def on_line(line: str) -> None:
        if line.startswith(EVENT_PREFIX):
            events.append(json.loads(line[len(EVENT_PREFIX):]))
        else:
            tail.append(line)

    rc = conn.run([conn.python, "-u", agent, *args], on_line)
    conn.remove(run_dir)
    if rc == EXIT_COMMAND_NOT_FOUND:
        raise RuntimeMissingError(f"{conn.description}: {conn.python!r} not found; install Python 3 there "
                                  "(sudo apt install python3) or pass --python")
    errors = [e for e in events if e["event"] == "error"]
    if rc != 0 or errors:
        msg = errors[0]["message"] if errors else "\n".join(tail[-10:])
        raise AgentError(f"{conn.description}: agent {args[0]} failed (status {rc}): {msg}")
    return events


def probe(conn: Connection) -> dict[str, Any]:
    """The agent's ``probe`` facts of an open connection."""
    workdir = conn.workdir()
    events = _agent(conn, ["probe", "--workdir", workdir, "--site", f"{workdir}/site"])
    return {k: v for k, v in events[-1].items() if k != "event"}


def check(target: str, options: DeviceOptions | None = None) -> dict[str, Any]:
    """What ``target`` has (arch, python, numpy, runtimes, free disk) and the commands to fix what is missing.

    Returns:
        The probe facts plus ``target`` and ``fixes`` (a list of commands, empty when nothing is missing).
    """
    device = resolve_device(target, options)
    conn = device.connect()
    try:
        info = probe(conn)
    finally:
        conn.close()
    py = info["python_executable"]
    fixes: list[str] = []
    offline = f"or offline, from this host: edgeslim device setup {target}"
    if not info["numpy_version"]:
        fixes.append(f"{py} -m pip install --user numpy  (or: sudo apt install python3-numpy)  {offline}")
    if not info["runtimes"].get("onnxruntime"):
        fixes.append(f"{RUNTIMES.get('onnxruntime').install_hint(py)}  {offline}")
    if not any(info["runtimes"].get(n) for n in ("ai-edge-litert", "tflite-runtime")):
        fixes.append(f"{RUNTIMES.get('ai-edge-litert').install_hint(py)}  (for .tflite)  {offline} --runtime "
                     "ai-edge-litert")
    if info["free_bytes"] < MIN_FREE_BYTES:
        fixes.append(f"free disk space in {info['workdir']} (only {info['free_bytes'] // 2**20} MiB) or pass --workdir")
    return {"target": device.description, **info, "missing": len(fixes), "fixes": fixes}


def platform_tags(machine: str, libc: str) -> list[str]:
    """pip ``--platform`` tags for a device's ``uname -m`` and ``platform.libc_ver()`` (e.g. ``glibc-2.36``).

    Raises:
        DeviceConfigError: Not a glibc system.
    """
    name, _, version = libc.partition("-")
    if name != "glibc" or "." not in version:
        raise DeviceConfigError(f"device libc {libc!r}: only glibc (manylinux) wheels are supported")
    minor = int(version.split(".")[1])
    arch = {"arm64": "aarch64", "armv8l": "armv7l"}.get(machine, machine)
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, _MANYLINUX_FIRST - 1, -1)]
    return [*tags, f"manylinux2014_{arch}", f"linux_{arch}"]


def download_wheels(packages: list[str], machine: str, libc: str, python_tag: str, dest: Path) -> list[Path]:
    """``pip download`` binary wheels for the device's platform and Python into ``dest``."""
    abi = "cp" + python_tag.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(dest),
           "--python-version", python_tag, "--implementation", "cp", "--abi", abi]
    for tag in platform_tags(machine, libc):
        cmd += ["--platform", tag]
    proc = subprocess.run([*cmd, *packages], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DeviceError(f"pip download for {machine} / Python {python_tag} failed:\n{proc.stderr[-2000:]}")
    return sorted(dest.glob("*.whl"))


def setup(target: str, runtimes: Sequence[str], options: DeviceOptions | None = None,
          wheels: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Install numpy and ``runtimes`` on an offline board from wheels fetched on this host.

    Args:
        target: ``ssh://user@host:port`` or a devices-file name (``local`` works too).
        runtimes: Runtime names whose wheels (and numpy) are downloaded for the device.
        options: Connection options.
        wheels: Extra wheel files of this host to install as well (e.g. your own build).

    Returns:
        ``{"target", "into", "wheels"}``; later benches on the board find them automatically.
    """
    packages = sorted({w for r in runtimes for w in RUNTIMES.get(r).wheels})
    extra = [Path(w) for w in wheels]
    for w in extra:
        if not w.is_file() or w.suffix != ".whl":
            raise DeviceConfigError(f"device setup: {w} is not a wheel file (.whl)")
    if not packages and not extra:
        raise DeviceConfigError("device setup: nothing to install (no --runtime and no --wheel)")
    device = resolve_device(target, options)
    conn = device.connect()
    try:
        info = probe(conn)
        with tempfile.TemporaryDirectory(prefix="edgeslim-wheels-") as tmp:
            files = [*(download_wheels(packages, info["machine"], info["libc"], info["python_tag"], Path(tmp))
                       if packages else []), *extra]
            need = sum(w.stat().st_size for w in files) * 3
            if conn.free_bytes() < need:
                raise DeviceError(f"{device.description}: {conn.workdir()} needs about {need // 2**20} MiB for the "
                                  "wheels; free space there or pass --workdir")
            into = f"{conn.workdir()}/site"
            _agent(conn, ["install-wheels", "--into", into], files)
    finally:
        conn.close()
    return {"target": device.description, "into": into, "wheels": [w.name for w in files]}


def trust(target: str, fingerprint: str, options: DeviceOptions | None = None, hashed: bool = False) -> TrustResult:
    """Pin ``target``'s SSH host key in known_hosts, only if its fingerprint is ``fingerprint``.

    Args:
        target: ``ssh://user@host:port`` or a devices-file name.
        fingerprint: ``SHA256:...`` as printed by ``ssh-keygen -lf`` on the device (or by edgeslim's
            unknown-host-key error, after comparing it with the device's).
        options: ``known_hosts`` (default ``~/.ssh/known_hosts``), ``connect_timeout``, devices file.
        hashed: Write the host name hashed, as OpenSSH's ``HashKnownHosts``.

    Returns:
        What was pinned (``written`` is false when the key was already there).

    Raises:
        FingerprintMismatchError: The device offers no key with that fingerprint; nothing written.
        DeviceConfigError: ``target`` is not an SSH device.
    """
    from edgeslim.device_bench.targets.ssh import SshDevice

    device = resolve_device(target, options)
    if not isinstance(device, SshDevice):
        raise DeviceConfigError(f"device trust: {target!r} is not an SSH device (no host key to trust)")
    return device.trust(fingerprint, hashed)
