"""Tables and Markdown of a fleet bench (``edgeslim bench ART... --target A --target B``).

Built from the fleet's results JSON (:meth:`edgeslim.device_bench.FleetReport.summary`): one
table per device and a comparison table (artefact x device median latency, ratio to the first
device). The CLI renders the same :class:`~edgeslim.report.tables.Table` objects in the terminal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgeslim.report import fmt
from edgeslim.report.data import mapping, records
from edgeslim.report.markdown import escape_md, render_table
from edgeslim.report.tables import Table

_DEVICE_HEADERS = ["Artefact", "Status", "Runtime", "p50 (ms)", "p90 (ms)", "p99 (ms)", "Load (ms)", "Peak RSS (MiB)",
                   "Top-1 (%)", "vs first artefact"]


def _name(path: Any) -> str:
    return fmt.text(path).replace("\\", "/").rsplit("/", 1)[-1]


def device_table(run: Mapping[str, Any]) -> Table:
    """One device's table: a row per artefact; a failed row shows its error.

    Args:
        run: One entry of the results' ``targets`` list.

    Returns:
        The table.
    """
    rows = records(run.get("results"))
    failed = any(r.get("status") != "ok" for r in rows)
    headers = _DEVICE_HEADERS + (["Error"] if failed else [])
    cells = []
    for r in rows:
        ok = r.get("status") == "ok"
        runtime = f"{fmt.text(r.get('runtime'))} {fmt.text(r.get('runtime_version'))}".strip() if ok else ""
        numbers = [fmt.fixed(r.get("p50"), 3), fmt.fixed(r.get("p90"), 3), fmt.fixed(r.get("p99"), 3),
                   fmt.fixed(r.get("load_ms"), 1), fmt.fixed(r.get("peak_rss_mb"), 1), fmt.percent(r.get("top1")),
                   fmt.fixed(r.get("ratio_p50"), 2, "×")]
        line = [_name(r.get("artifact")), fmt.text(r.get("status")), runtime,
                *(numbers if ok else ["-"] * len(numbers))]
        cells.append(line + ([fmt.text(r.get("error"))] if failed else []))
    title = fmt.text(run.get("target"))
    if run.get("device") and run.get("device") != run.get("target"):
        title += f" ({fmt.text(run.get('device'))})"
    note = f"Status: {fmt.text(run.get('status'))}"
    seconds = fmt.number(run.get("seconds"))
    if seconds is not None:
        note += f", {seconds:.1f} s"
    if run.get("error"):
        note += f". Error: {fmt.text(run.get('error'))}"
    return Table(title, headers, cells, note=note + ". Latency in ms; vs first artefact = p50 / p50 of the first.")


def comparison_table(summary: Mapping[str, Any]) -> Table:
    """Artefact x device: median latency (ms) and its ratio to the first device's.

    Args:
        summary: The fleet's results JSON.

    Returns:
        The table.
    """
    comparison = mapping(summary.get("comparison"))
    targets = [fmt.text(t) for t in comparison.get("targets") or []]
    reference = fmt.text(comparison.get("reference_target"))
    headers = ["Artefact"]
    for t in targets:
        headers += [f"{t} p50 (ms)", f"{t} vs {reference}"]
    cells = []
    for row in records(comparison.get("rows")):
        p50, ratios = mapping(row.get("p50")), mapping(row.get("ratio"))
        line = [_name(row.get("artifact"))]
        for t in targets:
            line += [fmt.fixed(p50.get(t), 3), fmt.fixed(ratios.get(t), 2, "×")]
        cells.append(line)
    return Table("Comparison", headers, cells,
                 note=f"Median latency per device; ratio = p50 / p50 on {reference} (above 1: slower).")


def fleet_tables(summary: Mapping[str, Any]) -> list[Table]:
    """Every device's table, then the comparison table."""
    return [*(device_table(run) for run in records(summary.get("targets"))), comparison_table(summary)]


def render_fleet_markdown(summary: Mapping[str, Any]) -> str:
    """The fleet bench as Markdown: settings, command, one table per device, the comparison.

    Args:
        summary: The fleet's results JSON (``targets``, ``comparison``, ``settings`` ...).

    Returns:
        The Markdown text.
    """
    devices = records(summary.get("targets"))
    parts = [f"# edgeslim bench on {len(devices)} device{'' if len(devices) == 1 else 's'}", ""]
    settings = mapping(summary.get("settings"))
    if settings:
        parts.append("- **Settings:** " + escape_md(", ".join(f"{k}={v}" for k, v in settings.items()
                                                               if v is not None)))
    for label, key in (("Command", "command"), ("edgeslim", "edgeslim_version"), ("Results file", "results_file"),
                       ("Failures", "failures")):
        if summary.get(key) is not None:
            parts.append(f"- **{label}:** {escape_md(str(summary[key]))}")
    parts += ["", "## Devices", ""]
    tables = fleet_tables(summary)
    for table in tables[:-1]:
        parts += [render_table(table), ""]
    parts += [render_table(tables[-1], level=2)]
    return "\n".join(parts).rstrip("\n") + "\n"
