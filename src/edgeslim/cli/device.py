"""``edgeslim device check|setup|trust``: what a board has and lacks, offline installation of runtimes,
and pinning a board's SSH host key after checking its fingerprint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeslim.cli.bench import (
    ConnectTimeoutOpt,
    DevicesOpt,
    IdentityOpt,
    IdleTimeoutOpt,
    KnownHostsOpt,
    PythonOpt,
    WorkdirOpt,
    device_options,
)
from edgeslim.cli.common import console, emit_json

device_app = typer.Typer(help="Inspect and prepare benchmark devices.", no_args_is_help=True)

TargetArg = Annotated[str, typer.Argument(help="local | ssh://user@host:port | devices-file name")]
Json = Annotated[bool, typer.Option("--json", help="Print a JSON summary as the last stdout line")]


def register(app: typer.Typer) -> None:
    """Add the ``device`` command group to ``app``."""
    app.add_typer(device_app, name="device")


@device_app.command("check")
def check_cmd(target: TargetArg, identity: IdentityOpt = None, known_hosts: KnownHostsOpt = None,
              python: PythonOpt = None, workdir: WorkdirOpt = None, connect_timeout: ConnectTimeoutOpt = None,
              idle_timeout: IdleTimeoutOpt = None, devices: DevicesOpt = None, json_: Json = False) -> None:
    """Report arch, python, numpy, runtimes and free disk on TARGET, and how to fix what is missing."""
    from edgeslim.device_bench.setup import check

    report = check(target, device_options(identity=identity, known_hosts=known_hosts, python=python, workdir=workdir,
                                          connect_timeout=connect_timeout, idle_timeout=idle_timeout, devices=devices))
    console.print(f"[bold]{report['target']}[/]: {report['machine']}, Python {report['python']}, "
                  f"{report['cpu_cores']} cores, {report['free_bytes'] / 2**20:.0f} MiB free in {report['workdir']}")
    for name, version in report["runtimes"].items():
        console.print(f"  {name}: {version or '[red]missing[/]'}")
    for fix in report["fixes"]:
        console.print(f"  [yellow]to fix:[/] {fix}", highlight=False)
    if json_:
        emit_json(report)


@device_app.command("setup")
def setup_cmd(
    target: TargetArg,
    runtime: Annotated[list[str] | None, typer.Option(
        help="Runtime(s) to install (default: onnxruntime, unless only --wheel is given)")] = None,
    wheel: Annotated[list[Path] | None, typer.Option(help="Extra wheel file(s) of this host to install too")] = None,
    identity: IdentityOpt = None, known_hosts: KnownHostsOpt = None, python: PythonOpt = None,
    workdir: WorkdirOpt = None, connect_timeout: ConnectTimeoutOpt = None, idle_timeout: IdleTimeoutOpt = None,
    devices: DevicesOpt = None, json_: Json = False,
) -> None:
    """For offline boards: download the device's wheels on this host and unpack them on the device.

    Uploads go into a fresh folder edgeslim creates (and marks) in the work dir; only that folder
    is deleted afterwards, never a folder of yours.
    """
    from edgeslim.device_bench.setup import setup

    runtimes = runtime if runtime is not None else ([] if wheel else ["onnxruntime"])
    report = setup(target, runtimes,
                   device_options(identity=identity, known_hosts=known_hosts, python=python, workdir=workdir,
                                  connect_timeout=connect_timeout, idle_timeout=idle_timeout, devices=devices),
                   wheels=wheel or [])
    console.print(f"installed {', '.join(report['wheels'])} into {report['into']} on {report['target']}")
    if json_:
        emit_json(report)


@device_app.command("trust")
def trust_cmd(
    target: Annotated[str, typer.Argument(help="ssh://user@host:port | devices-file name")],
    fingerprint: Annotated[str, typer.Option(
        help="The host key's SHA256:... fingerprint, as read on the device: ssh-keygen -lf "
             "/etc/ssh/ssh_host_ed25519_key.pub")],
    known_hosts: KnownHostsOpt = None,
    hash_: Annotated[bool, typer.Option("--hash", help="Write the host name hashed (as HashKnownHosts)")] = False,
    connect_timeout: ConnectTimeoutOpt = None, devices: DevicesOpt = None, json_: Json = False,
) -> None:
    """Pin TARGET's SSH host key in known_hosts, only if its fingerprint is the one given.

    Connects, takes the key the device proves it holds, and writes it (OpenSSH format, ``[host]:port``
    for a port other than 22, the file created with mode 0600) only when its fingerprint equals
    --fingerprint; otherwise it exits non-zero, shows both fingerprints and writes nothing. An entry
    already present is not written twice.
    """
    from edgeslim.device_bench.setup import trust

    result = trust(target, fingerprint, device_options(known_hosts=known_hosts, connect_timeout=connect_timeout,
                                                       devices=devices), hashed=hash_)
    verb = "trusted" if result.written else "already trusted"
    console.print(f"{verb}: {result.host} {result.key_type} {result.fingerprint} in {result.known_hosts}",
                  highlight=False)
    if json_:
        emit_json({"host": result.host, "key_type": result.key_type, "fingerprint": result.fingerprint,
                   "known_hosts": result.known_hosts, "written": result.written})
