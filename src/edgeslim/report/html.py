"""The HTML report: one self-contained file (inline CSS, plots as ``data:`` PNGs, no network).

Every string taken from the results is escaped with :func:`html.escape`. A Content-Security-Policy
``<meta>`` forbids every fetch (``default-src 'none'``; images only from ``data:``) and lets run
only the page's own script and style, named by their SHA-256. That script records each plot's
rendered size in ``data-rendered`` (``"WxH"``) and, if a plot fails to decode, says so in its place.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from html import escape
from typing import Any

from edgeslim.report import fmt
from edgeslim.report.data import check_results, mapping, records
from edgeslim.report.plots import Plot, make_plots
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

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:2rem auto;
max-width:76rem;padding:0 1rem;color:#1d2330;background:#fff}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #d0d5dd;padding-bottom:.2rem;margin-top:2rem}
.table-scroll{max-width:100%;overflow-x:auto;margin:.6rem 0 1rem}
table{border-collapse:collapse;font-size:.9rem}
th,td{border:1px solid #d0d5dd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#eef1f6}td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
tr.hl td{background:#fff4cc;font-weight:600}.missing{color:#8a93a3;font-style:italic}
figure{margin:1rem 0}figcaption{font-size:.85rem;color:#4a5263}img{max-width:100%;height:auto}
pre{background:#f5f7fa;border:1px solid #d0d5dd;padding:.6rem;overflow-x:auto;white-space:pre-wrap}
dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.2rem 1rem}dt{font-weight:600}
dd{margin:0;min-width:0;overflow-wrap:anywhere}
.note{font-size:.85rem;color:#4a5263}nav a{margin-right:1rem}
""".strip()

_SCRIPT = """
window.addEventListener("load", function () {
  var ok = 0;
  for (var img of document.querySelectorAll("img.plot")) {
    img.dataset.rendered = img.naturalWidth + "x" + img.naturalHeight;
    if (img.naturalWidth > 0 && img.naturalHeight > 0) { ok += 1; continue; }
    var p = document.createElement("p");
    p.className = "missing";
    p.textContent = "This plot could not be displayed: " + img.alt;
    img.replaceWith(p);
  }
  document.body.dataset.plotsRendered = String(ok);
});
""".strip()


def _sha256(source: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()


#: Fetch nothing; run only this page's own script and style.
CSP = (
    f"default-src 'none'; img-src data:; style-src '{_sha256(_STYLE)}'; script-src '{_sha256(_SCRIPT)}'; "
    "base-uri 'none'; form-action 'none'"
)

_NUMERIC = re.compile(r"^-?[\d,]+(\.\d+)?( ?[kMGT]|×)?$")


def _table(table: Table, *, titled: bool = True) -> str:
    """A table as HTML (under an ``<h3>`` of its title when ``titled``), or a line saying it is empty."""
    if not table.rows:
        return f'<p class="missing">{escape(table.title)}: {fmt.NOT_MEASURED}.</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = []
    for i, row in enumerate(table.rows):
        cells = "".join(
            f'<td class="num">{escape(c)}</td>' if _NUMERIC.match(c) else f"<td>{escape(c)}</td>" for c in row
        )
        body.append(f'<tr class="hl">{cells}</tr>' if i in table.highlight else f"<tr>{cells}</tr>")
    note = f'<p class="note">{escape(table.note)}</p>' if table.note else ""
    heading = f"<h3>{escape(table.title)}</h3>" if titled else ""
    # the box scrolls sideways, not the page, when the table is wider than the window
    return (f'{heading}{note}<div class="table-scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _figure(plot: Plot | None) -> str:
    """A plot as a ``<figure>`` with an inline PNG (nothing when the plot was not made)."""
    if plot is None:
        return ""
    data = base64.b64encode(plot.png).decode("ascii")
    title = escape(plot.title)
    return (
        f'<figure id="plot-{escape(plot.name)}"><img class="plot" alt="{title}" '
        f'src="data:image/png;base64,{data}"><figcaption>{title}</figcaption></figure>'
    )


def _section(anchor: str, heading: str, parts: list[str]) -> str:
    return f'<section id="{anchor}"><h2>{escape(heading)}</h2>{"".join(parts)}</section>'


def _provenance(results: Mapping[str, Any]) -> str:
    items = "".join(f"<dt>{escape(k)}</dt><dd><code>{escape(v)}</code></dd>" for k, v in provenance(results))
    parts = [f"<dl>{items}</dl>"] if items else [f'<p class="missing">Command and commit: {fmt.NOT_MEASURED}.</p>']
    recipe = recipe_text(results)
    parts.append(f"<h3>Recipe</h3><pre><code>{escape(recipe)}</code></pre>" if recipe is not None
                 else f'<p class="missing">Recipe: {fmt.NOT_MEASURED}.</p>')
    return _section("provenance", "Provenance", parts)


def render_html(results: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page.

    Sections: the variants table and plot; the search (budget, Pareto plot and front, trace plot
    and table); per-layer keep ratios and bit-widths; step timings; provenance (command, commit,
    recipe). Sections absent from ``results`` are listed at the top as not in the results.

    Args:
        results: The results dict (only ``rows`` is required; see :mod:`edgeslim.report`).

    Returns:
        The HTML text.

    Raises:
        ReportDataError: ``results`` has no ``rows`` list.
    """
    check_results(results)
    plots = make_plots(results)
    title = fmt.text(results.get("title")) or "edgeslim report"
    sections = [_section("variants", "Variants", [_table(variants_table(results), titled=False),
                                                  _figure(plots.get("variants"))])]
    absent = []
    if mapping(results.get("search")):
        sections.append(_section("search", "Search", [
            _table(budget_table(results)), _figure(plots.get("pareto")), _table(front_table(results)),
            _figure(plots.get("trace")), _table(trace_table(results)),
        ]))
    else:
        absent.append("search")
    for key, builder in (("layers", layers_table), ("steps", steps_table)):
        if records(results.get(key)):
            table = builder(results)
            sections.append(_section(key, table.title, [_figure(plots.get(key)), _table(table, titled=False)]))
        else:
            absent.append(key)
    sections.append(_provenance(results))
    nav = "".join(f'<a href="#{s}">{s}</a>' for s in ("variants", "search", "layers", "steps", "provenance")
                  if s not in absent)
    missing = f'<p class="missing">Not in these results: {", ".join(absent)}.</p>' if absent else ""
    subtitle = " · ".join(escape(v) for k, v in provenance(results) if k in ("Model", "Created", "Commit"))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n<body>"
        f"<h1>{escape(title)}</h1><p class=\"note\">{subtitle}</p><nav>{nav}</nav>{missing}\n"
        + "\n".join(sections)
        + f"\n<script>{_SCRIPT}</script></body></html>\n"
    )
