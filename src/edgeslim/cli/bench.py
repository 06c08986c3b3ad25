"""``edgeslim bench``: benchmark artefacts locally or on a board over SSH, with a comparison table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeslim.cli.common import console, emit_json, progress


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("bench")(bench_cmd)


#: Device options shared by ``bench`` and ``device check|setup|trust``. ``None`` means "not given":
#: then a devices-file entry's value applies, else the default (flag > devices file > default).
IdentityOpt = Annotated[Path | None, typer.Option(help="SSH private key (default: agent / ~/.ssh keys)")]
KnownHostsOpt = Annotated[Path | None, typer.Option(
    help="known_hosts file, checked strictly (default ~/.ssh/known_hosts); add a board with: edgeslim device trust")]
PythonOpt = Annotated[str | None, typer.Option(help="Python on the device (default python3)")]
WorkdirOpt = Annotated[str | None, typer.Option(
    help="Work dir on the device (default ~/.cache/edgeslim-bench); over SSH a relative path is relative to the "
         "login's home there, locally to the current directory")]
ConnectTimeoutOpt = Annotated[float | None, typer.Option(
    help="Seconds for connect + SSH handshake (default 10, or the devices file's connect_timeout)")]
IdleTimeoutOpt = Annotated[float | None, typer.Option(
    help="Seconds a command on the device may print nothing before it is abandoned as wedged (default 300, or the "
         "devices file's idle_timeout; 0: no limit)")]
DevicesOpt = Annotated[Path | None, typer.Option(help="Devices TOML (default ~/.config/edgeslim/devices.toml)")]


def device_options(*, identity: Path | None = None, known_hosts: Path | None = None, python: str | None = None,
                   workdir: str | None = None, connect_timeout: float | None = None,
                   idle_timeout: float | None = None, devices: Path | None = None) -> Any:
    """The :class:`~edgeslim.device_bench.targets.DeviceOptions` of the shared CLI flags (unset stays ``None``)."""
    from edgeslim.device_bench.targets import DeviceOptions

    return DeviceOptions(identity=str(identity) if identity else None,
                         known_hosts=str(known_hosts) if known_hosts else None, python=python, workdir=workdir,
                         connect_timeout=connect_timeout, idle_timeout=idle_timeout,
                         devices_file=str(devices) if devices else None)


def bench_cmd(
    artifacts: Annotated[list[Path], typer.Argument(help="Artefacts (.onnx, .tflite, .engine); ratios are to the first")],
    target: Annotated[list[str] | None, typer.Option(
        metavar="TARGET",
        help="local (default) | ssh://user@host:port | a name from the devices file; repeat it to bench on several "
             "devices at once (one table per device, a comparison table; exit status 1 if any device failed)")] = None,
    runs: Annotated[int, typer.Option(help="Timed runs per artefact")] = 50,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up runs")] = 5,
    threads: Annotated[int, typer.Option(help="Runtime threads (0: runtime default)")] = 0,
    runtime: Annotated[str, typer.Option(help="auto | onnxruntime | ai-edge-litert | tflite-runtime | tensorrt")] = "auto",
    inputs: Annotated[Path | None, typer.Option(help=".npz with x (inputs) and optional y (labels: top-1)")] = None,
    results: Annotated[Path, typer.Option(help="JSON-lines file each result is appended to")] = Path("edgeslim-bench.jsonl"),
    identity: IdentityOpt = None,
    known_hosts: KnownHostsOpt = None,
    python: PythonOpt = None,
    workdir: WorkdirOpt = None,
    connect_timeout: ConnectTimeoutOpt = None,
    idle_timeout: IdleTimeoutOpt = None,
    devices: DevicesOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON summary as the last stdout line")] = False,
    energy: Annotated[bool, typer.Option(
        "--energy", help="Also measure energy per inference (J) and average watts above the idle baseline, read on "
                         "the device (RAPL, hwmon, Jetson INA3221, Raspberry Pi 5 PMIC, NVML / nvidia-smi)")] = False,
    energy_sensor: Annotated[str, typer.Option(
        "--energy-sensor", help="auto | rapl | hwmon | jetson-ina3221 | pmic | nvml | nvidia-smi")] = "auto",
    energy_seconds: Annotated[float, typer.Option(
        "--energy-seconds", help="Seconds of idle baseline, then at least as long of inference")] = 3.0,
    report: Annotated[Path | None, typer.Option(
        help="Write the per-device tables and the comparison as JSON (this file) and Markdown (same name, .md); "
             "benches through the fleet path even with one --target")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite the --report files if they exist")] = False,
) -> None:
    """Benchmark ARTIFACTS on TARGET(s): latency percentiles, load time, peak memory, runtime, machine (and energy)."""
    from edgeslim.device_bench import bench

    opts = device_options(identity=identity, known_hosts=known_hosts, python=python, workdir=workdir,
                          connect_timeout=connect_timeout, idle_timeout=idle_timeout, devices=devices)
    targets = target or ["local"]
    if len(targets) > 1 or report is not None:
        _fleet(artifacts, targets, opts, runs=runs, warmup=warmup, threads=threads, runtime=runtime, inputs=inputs,
                  results=results, energy=energy_sensor if energy else None, energy_seconds=energy_seconds,
                  report=report, force=force, json_=json_)
        return
    with progress() as bar:
        tasks: dict[str, Any] = {}

        def on_event(artifact: str, event: dict[str, Any]) -> None:
            if artifact not in tasks:
                tasks[artifact] = bar.add_task(Path(artifact).name, total=runs)
            if event["event"] == "run":
                bar.update(tasks[artifact], completed=event["i"] + 1)
            elif event["event"] == "energy" and event.get("phase") == "idle":
                console.print(f"{Path(artifact).name}: measuring energy with {event['sensor']} (idle baseline, then "
                              "inference)", highlight=False)
            elif event["event"] == "lock_wait":
                console.print(f"device busy ({event.get('holder', '')}); waiting for its lock")

        outcome = bench(artifacts, targets[0], runs=runs, warmup=warmup, threads=threads, runtime=runtime, inputs=inputs,
                       results_file=results, options=opts, on_event=on_event,
                       energy=energy_sensor if energy else None, energy_seconds=energy_seconds)
    summary = outcome.summary()
    console.print(_table(summary))
    for r in summary["results"]:
        if r.get("energy_unavailable_reason"):
            console.print(f"energy of {Path(r['artifact']).name}: {r['energy_unavailable_reason']}", highlight=False)
    console.print(f"results appended to {results}")
    if json_:
        emit_json(summary)


def _table(summary: dict[str, Any]) -> Any:
    from rich.table import Table

    machines = sorted({str(r["machine"]) for r in summary["results"]})
    table = Table(title=f"bench on {summary['target']} ({', '.join(machines)})")
    energy = any("energy_unavailable_reason" in r for r in summary["results"])
    columns = ("artefact", "runtime", "p50 ms", "p90 ms", "p99 ms", "load ms", "RSS MiB", "top-1", "ratio")
    for col in columns + (("mJ/inf", "W") if energy else ()):
        table.add_column(col, justify="left" if col in ("artefact", "runtime") else "right", overflow="fold")
    for r in summary["results"]:
        def f(key: str, fmt: str = "{:.3f}", row: dict[str, Any] = r) -> str:
            return "-" if row.get(key) is None else fmt.format(row[key])

        table.add_row(Path(r["artifact"]).name, f"{r['runtime']} {r['runtime_version']}",
                      f("p50"), f("p90"), f("p99"), f("load_ms", "{:.1f}"), f("peak_rss_mb", "{:.1f}"),
                      f("top1", "{:.2%}"), f("ratio_p50", "{:.2f}x"),
                      *(("-" if r.get("joules_per_inference") is None else f"{r['joules_per_inference'] * 1e3:.3f}",
                         f("avg_watts", "{:.2f}")) if energy else ()))
    return table


def _fleet(artifacts: list[Path], targets: list[str], opts: Any, *, runs: int, warmup: int, threads: int, runtime: str,
           inputs: Path | None, results: Path, energy: str | None, energy_seconds: float, report: Path | None,
           force: bool, json_: bool) -> None:
    """Bench on every target at once: a table per device, the comparison, the report files; exit 1 on failures."""
    import json
    import shlex
    import sys

    from edgeslim import __version__
    from edgeslim.cli.common import refuse_existing_outputs
    from edgeslim.device_bench import bench_fleet
    from edgeslim.report.fleet import fleet_tables, render_fleet_markdown

    md = report.with_suffix(".md") if report is not None else None
    if report is not None and md is not None:
        if report.suffix != ".json":
            raise typer.BadParameter(f"{report}: the report is a .json file (its Markdown goes next to it as .md)",
                                     param_hint="--report")
        refuse_existing_outputs(report.parent, [report.name, md.name], force, param_hint="--report")
    with progress() as bar:
        tasks: dict[tuple[str, str], Any] = {}

        def on_event(target: str, artifact: str, event: dict[str, Any]) -> None:
            key = (target, artifact)
            if key not in tasks:
                tasks[key] = bar.add_task(f"{target}: {Path(artifact).name}", total=runs)
            if event["event"] == "run":
                bar.update(tasks[key], completed=event["i"] + 1)
            elif event["event"] == "lock_wait":
                console.print(f"{target} busy ({event.get('holder', '')}); waiting for its lock", highlight=False)

        fleet = bench_fleet(artifacts, targets, runs=runs, warmup=warmup, threads=threads, runtime=runtime,
                            inputs=inputs, results_file=results, options=opts, on_event=on_event, energy=energy,
                            energy_seconds=energy_seconds)
    summary = {**fleet.summary(), "command": shlex.join(["edgeslim", *sys.argv[1:]]), "edgeslim_version": __version__}
    for table in fleet_tables(summary):
        console.print(_rich(table))
    console.print(f"results appended to {results}")
    if report is not None and md is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
        md.write_text(render_fleet_markdown(summary), encoding="utf-8")
        console.print(f"report: {report}, {md}")
    if json_:
        emit_json(summary)
    if fleet.failures:
        failed = [run.target for run in fleet.runs if run.status != "ok"]
        console.print(f"[bold red]error:[/] {fleet.failures} of {len(fleet.artifacts) * len(fleet.runs)} benches "
                      f"failed (on {', '.join(failed)}); the others finished. Errors are in the tables and in "
                      f"{results}", highlight=False)
        raise typer.Exit(1)


def _rich(table: Any) -> Any:
    """A :class:`~edgeslim.report.tables.Table` as a rich table (the note as its caption)."""
    from rich.table import Table

    out = Table(title=table.title, caption=table.note or None)
    for col in table.headers:
        out.add_column(col, justify="left" if col in ("Artefact", "Status", "Runtime", "Error") else "right", overflow="fold")
    for row in table.rows:
        out.add_row(*row)
    return out
