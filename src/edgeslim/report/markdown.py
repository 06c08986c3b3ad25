"""The Markdown report: the same tables as the HTML report (GitHub-flavoured), without plots.

Cell text is escaped for Markdown (``|``, emphasis, link and math characters, line breaks) and for the
HTML a Markdown viewer passes through (``<``, ``>``, ``&`` become entities), so a name such as
``<script>`` is shown, never run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from edgeslim.report import fmt
from edgeslim.report.data import check_results, mapping, records
from edgeslim.report.tables import (
    Table,
    budget_table,
    front_table,
    layers_table,
    provenance,
    recipe_text,
    steps_table,
    trace_table,
    variants_table,
)

_SPECIAL = re.compile(r"([\\`*_\[\]|#$])")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape_md(value: str) -> str:
    """``value`` as literal Markdown text, on one line.

    Args:
        value: Any text.

    Returns:
        The escaped text.
    """
    out = "".join(_ENTITIES.get(ch, ch) for ch in value)
    out = _SPECIAL.sub(r"\\\1", out)
    return " ".join(out.split())


def _fence(text: str, lang: str = "") -> str:
    """``text`` in a code fence longer than any run of backticks inside it."""
    runs = [len(m) for m in re.findall(r"`+", text)]
    ticks = "`" * max(3, max(runs, default=0) + 1)
    return f"{ticks}{lang}\n{text}\n{ticks}"


def _table(table: Table, level: int = 3) -> str:
    """A table as Markdown under a heading of its title at ``level``, or a line saying it is empty."""
    lines = [f"{'#' * level} {escape_md(table.title)}", ""]
    if not table.rows:
        return "\n".join([*lines, f"_{fmt.NOT_MEASURED}._"])
    if table.note:
        lines += [escape_md(table.note), ""]
    lines.append("| " + " | ".join(escape_md(h) for h in table.headers) + " |")
    lines.append("|" + "|".join("---" for _ in table.headers) + "|")
    for i, row in enumerate(table.rows):
        cells = [escape_md(c) for c in row]
        if i in table.highlight and cells:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_table(table: Table, level: int = 3) -> str:
    """One table as Markdown (heading at ``level``, note, rows), for the other Markdown writers.

    Args:
        table: The table.
        level: The heading level of its title.

    Returns:
        The Markdown text.
    """
    return _table(table, level)


def render_markdown(results: Mapping[str, Any]) -> str:
    """The report as Markdown: the variants table, search, layers, steps and provenance.

    Args:
        results: The results dict (only ``rows`` is required; see :mod:`edgeslim.report`).

    Returns:
        The Markdown text (the plots are in the HTML report).

    Raises:
        ReportDataError: ``results`` has no ``rows`` list.
    """
    check_results(results)
    title = fmt.text(results.get("title")) or "edgeslim report"
    parts = [f"# {escape_md(title)}", "", "Plots: see report.html next to this file.", ""]
    parts += [f"- **{label}:** {escape_md(value)}" for label, value in provenance(results) if label != "Command"]
    parts += ["", _table(variants_table(results), level=2)]
    absent = []
    if mapping(results.get("search")):
        parts += ["", "## Search", ""]
        for table in (budget_table, front_table, trace_table):
            parts += [_table(table(results)), ""]
    else:
        absent.append("search")
    for key, builder in (("layers", layers_table), ("steps", steps_table)):
        if records(results.get(key)):
            parts += ["", _table(builder(results), level=2)]
        else:
            absent.append(key)
    if absent:
        parts += ["", f"_Not in these results: {', '.join(absent)}._"]
    parts += ["", "## Provenance", ""]
    command = results.get("command")
    parts.append(_fence(str(command), "sh") if command is not None else f"_Command: {fmt.NOT_MEASURED}._")
    recipe = recipe_text(results)
    parts += ["", "Recipe:", "", _fence(recipe, "yaml") if recipe is not None else f"_Recipe: {fmt.NOT_MEASURED}._"]
    return "\n".join(parts).rstrip("\n") + "\n"
