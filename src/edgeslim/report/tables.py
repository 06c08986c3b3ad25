"""The report's tables as plain text cells: built once, rendered by both the HTML and the Markdown writer.

Cells are unescaped text; each renderer escapes them for its own format. A table with no rows is
still built (the renderers say the section is empty) so that a missing section never raises.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from edgeslim.report import fmt
from edgeslim.report.data import latency, mapping, records, runtimes


@dataclass(frozen=True)
class Table:
    """A table of text cells.

    Attributes:
        title: The heading shown above it.
        headers: Column names.
        rows: One list of cell texts per row (as long as ``headers``).
        highlight: Indices of rows to emphasise (the chosen search point).
        note: A sentence shown under the title (units, what the columns compare with).
    """

    title: str
    headers: list[str]
    rows: list[list[str]]
    highlight: frozenset[int] = field(default_factory=frozenset)
    note: str = ""


def variants_table(results: Mapping[str, Any]) -> Table:
    """The main table: one row per variant (original, pruned, quantized ...).

    Columns: size (MB) and size ratio vs the first row, parameters, MACs, top-1 (%), and for every
    ``runtime@target`` the latency (ms) and the speed-up vs the first row.

    Args:
        results: The results dict.

    Returns:
        The table.
    """
    rows = records(results.get("rows"))
    keys = runtimes(rows)
    headers = ["Variant", "Size (MB)", "Size ratio", "Params", "MACs", "Top-1 (%)"]
    for key in keys:
        headers += [f"{key} (ms)", f"{key} speed-up"]
    headers += ["File", "Notes"]
    first = rows[0] if rows else {}
    cells = []
    for row in rows:
        line = [
            fmt.text(row.get("variant")),
            fmt.megabytes(row.get("bytes")),
            fmt.ratio(row.get("bytes"), first.get("bytes"), suffix="", digits=3),
            fmt.count(row.get("params")),
            fmt.count(row.get("macs")),
            fmt.percent(row.get("top1")),
        ]
        for key in keys:
            line += [fmt.fixed(latency(row, key)), fmt.ratio(latency(first, key), latency(row, key))]
        line += [fmt.text(row.get("file")), fmt.text(row.get("notes"))]
        cells.append(line)
    first_name = fmt.text(first.get("variant")) or "the first row"
    note = (
        f"MB = 10^6 bytes. Size ratio = size / size of {first_name}; "
        f"speed-up = latency of {first_name} / latency (per runtime@target)."
    )
    return Table("Variants", headers, cells, note=note)


def front_table(results: Mapping[str, Any]) -> Table:
    """The Pareto front of the search: size, predicted and measured latency, proxy, top-1.

    Args:
        results: The results dict.

    Returns:
        The table (empty without ``search.front``); the chosen point is highlighted.
    """
    front = records(mapping(results.get("search")).get("front"))
    headers = ["#", "Size (MB)", "Predicted (ms)", "Measured (ms)", "Measured / predicted", "Proxy", "Top-1 (%)", "Chosen"]
    cells = [
        [
            str(i + 1),
            fmt.megabytes(p.get("bytes")),
            fmt.fixed(p.get("predicted_ms")),
            fmt.fixed(p.get("measured_ms")),
            fmt.ratio(p.get("measured_ms"), p.get("predicted_ms"), suffix=""),
            fmt.fixed(p.get("proxy"), 4),
            fmt.percent(p.get("top1")),
            fmt.yes_no(p.get("chosen")),
        ]
        for i, p in enumerate(front)
    ]
    chosen = frozenset(i for i, p in enumerate(front) if p.get("chosen"))
    return Table("Pareto front", headers, cells, highlight=chosen)


def trace_table(results: Mapping[str, Any]) -> Table:
    """The search trace: one row per step (the change tried, its cost, whether it was kept).

    Args:
        results: The results dict.

    Returns:
        The table (empty without ``search.trace``).
    """
    trace = records(mapping(results.get("search")).get("trace"))
    headers = ["Step", "Change", "Size (MB)", "MACs", "Predicted (ms)", "Measured (ms)", "Proxy", "Accepted"]
    cells = [
        [
            fmt.text(t.get("step")),
            fmt.text(t.get("change")),
            fmt.megabytes(t.get("bytes")),
            fmt.count(t.get("macs")),
            fmt.fixed(t.get("predicted_ms")),
            fmt.fixed(t.get("measured_ms")),
            fmt.fixed(t.get("proxy"), 4),
            fmt.yes_no(t.get("accepted")),
        ]
        for t in trace
    ]
    return Table("Search trace", headers, cells)


def layers_table(results: Mapping[str, Any]) -> Table:
    """Per-layer widths and bit-widths.

    Args:
        results: The results dict.

    Returns:
        The table (empty without ``layers``).
    """
    layers = records(results.get("layers"))
    headers = ["Layer", "Channels before", "Channels after", "Keep ratio", "Bits"]
    cells = [
        [
            fmt.text(layer.get("name")),
            fmt.fixed(layer.get("channels_before"), 0),
            fmt.fixed(layer.get("channels_after"), 0),
            fmt.fixed(layer.get("keep_ratio"), 3),
            fmt.fixed(layer.get("bits"), 0),
        ]
        for layer in layers
    ]
    return Table("Layers", headers, cells)


def steps_table(results: Mapping[str, Any]) -> Table:
    """The pipeline's steps with their wall time and status, and the total.

    Args:
        results: The results dict.

    Returns:
        The table (empty without ``steps``).
    """
    steps = records(results.get("steps"))
    cells = [[fmt.text(s.get("name")), fmt.fixed(s.get("seconds"), 1), fmt.text(s.get("status"))] for s in steps]
    seconds = [fmt.number(s.get("seconds")) for s in steps]
    if steps:
        total = sum(x for x in seconds if x is not None)
        cells.append(["total", fmt.fixed(total, 1), ""])
    return Table("Step timings", ["Step", "Seconds", "Status"], cells)


def budget_table(results: Mapping[str, Any]) -> Table:
    """The search's budget (one row per key) and the number of measurements it took.

    Args:
        results: The results dict.

    Returns:
        The table (empty without ``search``).
    """
    search = mapping(results.get("search"))
    cells = [[str(k), fmt.text(v) if v is not None else fmt.NOT_MEASURED] for k, v in mapping(search.get("budget")).items()]
    if "measurements" in search:
        cells.append(["measurements", fmt.fixed(search.get("measurements"), 0)])
    return Table("Search budget", ["Budget", "Value"], cells)


def provenance(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The identifying fields present in the results: model, created, commit, command.

    Args:
        results: The results dict.

    Returns:
        ``(label, text)`` pairs, only for the fields present.
    """
    labels = (("model", "Model"), ("created", "Created"), ("commit", "Commit"), ("command", "Command"))
    return [(label, fmt.text(results[key])) for key, label in labels if results.get(key) is not None]


def recipe_text(results: Mapping[str, Any]) -> str | None:
    """The recipe as YAML (JSON when it holds something YAML cannot write), or ``None`` if absent.

    Args:
        results: The results dict.

    Returns:
        The text, or ``None``.
    """
    recipe = results.get("recipe")
    if recipe is None:
        return None
    try:
        return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).rstrip("\n")
    except yaml.YAMLError:
        return json.dumps(recipe, indent=2, default=str)
