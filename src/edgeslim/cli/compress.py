"""``edgeslim compress``: run a whole recipe (prune, fine-tune, quantize, export, bench, report) into a folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeslim.cli.common import ForceOpt, JsonOpt, console, emit_json, progress, stdout_to_stderr
from edgeslim.cli.failure import set_step


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("compress")(compress_cmd)


class Progress:
    """Shows the run's events: one line per step, a bar for the work inside a step."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.task, self.t0 = bar, None, time.perf_counter()

    def __call__(self, event: dict[str, Any]) -> None:
        kind, step = event.get("event"), event.get("step")
        if kind == "step":
            n = f"[{event['index'] + 1}/{event['total']}]"
            status = event["status"]
            if status == "start":
                set_step(step)
                self.bar.console.print(f"{n} {step} …", highlight=False)
            elif status == "resumed":
                self.bar.console.print(f"{n} {step}: [cyan]resumed[/] (finished earlier in {event['seconds']:.1f} s)")
            elif status == "done":
                self.bar.console.print(f"{n} {step}: [green]done[/] in {event['seconds']:.1f} s")
            else:
                self.bar.console.print(f"{n} {step}: [red]failed[/] after {event['seconds']:.1f} s")
            self._drop()
        elif kind == "progress":
            what = f"{step}: {event['what']}"
            if self.task is None:
                self.task = self.bar.add_task(what, total=max(1, int(event["total"])))
            self.bar.update(self.task, description=what, completed=int(event["completed"]), total=max(1, int(event["total"])))
        elif kind == "info":
            self.bar.console.print(f"    {event['message']}", highlight=False)

    def _drop(self) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None


def compress_cmd(
    recipe: Annotated[Path, typer.Argument(help="Recipe file (YAML): model, data, prune, finetune, quantize, export, bench")],
    out: Annotated[Path, typer.Option(help="Output folder: every artefact, report.html, report.md, results.json")],
    force: ForceOpt = False,
    json_: JsonOpt = False,
    device: Annotated[str | None, typer.Option(
        "--device", help="Override the recipe's device (where training, calibration and evaluation run): auto, "
                         "cpu, cuda, cuda:N")] = None,
) -> None:
    """Run RECIPE into OUT: prune, fine-tune, quantize, export, bench and report; rerun to resume."""
    from edgeslim.pipelines.recipe import load_recipe
    from edgeslim.pipelines.runner import RESULTS_FILE, STATE_FILE, compress
    from edgeslim.pipelines.steps import CompressError

    rec = load_recipe(recipe)  # every key and value checked before any work
    if device is not None:
        from dataclasses import replace

        from edgeslim.pipelines.recipe_sections import check_torch_device
        from edgeslim.train import resolve_torch_device

        resolve_torch_device(device)  # a GPU that is not there is named as --device
        rec = replace(rec, device=check_torch_device(device))
    command = " ".join(["edgeslim", "compress", str(recipe), "--out", str(out)] + (["--force"] if force else [])
                       + (["--device", device] if device is not None else []))
    console.print(f"compress {recipe} → {out} ({rec.pipeline.value}, model {rec.model})", highlight=False)
    t0 = time.perf_counter()
    try:
        with progress() as bar, stdout_to_stderr():
            results = compress(rec, out, force=force, on_event=Progress(bar), command=command)
    except (Exception, KeyboardInterrupt) as exc:  # the message itself: edgeslim.cli.failure
        if not isinstance(exc, CompressError) and (out / STATE_FILE).is_file():
            console.print(f"the finished steps are kept in {out}: fix the cause and rerun the same command to resume")
        raise
    print_table(results)
    report_html = out / "report.html"
    console.print(f"[green]wrote[/] {report_html}, {out / 'report.md'}, {out / RESULTS_FILE} "
                  f"in {time.perf_counter() - t0:.0f} s", highlight=False)
    if json_:
        emit_json({"out": str(out), "report_html": str(report_html), "report_md": str(out / "report.md"),
                   "results_json": str(out / RESULTS_FILE), "rows": results["rows"], "steps": results["steps"]})


def _fmt(value: Any, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "—" if value is None else f"{value * scale:{spec}}{unit}"


def print_table(results: dict[str, Any]) -> None:
    from rich.table import Table

    rows = results["rows"]
    keys = list(dict.fromkeys(k for r in rows for k in (r.get("latency_ms") or {})))
    t = Table(title=results.get("title", "edgeslim compress"))
    t.add_column("variant", no_wrap=True)
    for name in ("top-1", "MB", "params M", "MMACs", *[f"{k.replace('@', ' @')} ms" for k in keys]):
        t.add_column(name, justify="right", overflow="fold")
    for r in rows:
        lat = r.get("latency_ms") or {}
        t.add_row(r["variant"], _fmt(r.get("top1"), ".2f", 100, " %"), _fmt(r.get("bytes"), ".2f", 1e-6),
                  _fmt(r.get("params"), ".2f", 1e-6), _fmt(r.get("macs"), ".1f", 1e-6),
                  *[_fmt(lat.get(k), ".3f") for k in keys])
    console.print(t)
