"""``edgeslim device check|setup``: what a board has and lacks, and offline installation of runtimes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeslim.cli.bench import target_options
from edgeslim.cli.common import console, emit_json

device_app = typer.Typer(help="Inspect and prepare benchmark devices.", no_args_is_help=True)

Identity = Annotated[Path | None, typer.Option(help="SSH private key")]
KnownHosts = Annotated[Path | None, typer.Option(help="known_hosts file (strict)")]
Python = Annotated[str | None, typer.Option(help="Python on the device (default python3)")]
Workdir = Annotated[str | None, typer.Option(help="Work dir on the device")]
Timeout = Annotated[float, typer.Option(help="Seconds for connect + SSH handshake")]
Devices = Annotated[Path | None, typer.Option(help="Devices TOML file")]
Json = Annotated[bool, typer.Option("--json", help="Print a JSON summary as the last stdout line")]


def register(app: typer.Typer) -> None:
    """Add the ``device`` command group to ``app``."""
    app.add_typer(device_app, name="device")


@device_app.command("check")
def check_cmd(
              target: Annotated[str, typer.Argument(help="local | ssh://user@host:port | devices-file name")],
              identity: Identity = None, known_hosts: KnownHosts = None, python: Python = None,
              workdir: Workdir = None, connect_timeout: Timeout = 10.0, devices: Devices = None,
              json_: Json = False) -> None:
    """Report arch, python, numpy, runtimes and free disk on TARGET, and how to fix what is missing."""
    from edgeslim.device_bench.setup import check

    report = check(target, target_options(identity=identity, known_hosts=known_hosts, python=python, workdir=workdir,
                                  connect_timeout=connect_timeout, devices=devices))
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
              target: Annotated[str, typer.Argument(help="ssh://user@host:port | devices-file name")],
              runtime: Annotated[list[str] | None, typer.Option(help="Runtime(s) to install (default: onnxruntime)")] = None,
              identity: Identity = None, known_hosts: KnownHosts = None, python: Python = None,
              workdir: Workdir = None, connect_timeout: Timeout = 10.0, devices: Devices = None,
              json_: Json = False) -> None:
    """For offline boards: download the device's wheels on this host and unpack them on the device."""
    from edgeslim.device_bench.setup import setup

    report = setup(target, runtime or ["onnxruntime"],
                   target_options(identity=identity, known_hosts=known_hosts, python=python, workdir=workdir,
                                  connect_timeout=connect_timeout, devices=devices))
    console.print(f"installed {', '.join(report['wheels'])} into {report['into']} on {report['target']}")
    if json_:
        emit_json(report)
