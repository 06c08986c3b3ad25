"""The compression report: HTML (self-contained, with plots) and Markdown, rendered from results.

``render_report(results, out_dir)`` writes ``report.html`` and ``report.md``; ``render_html`` and
``render_markdown`` return the texts. They are pure functions of the results dict
(``results.json``), whose schema is::

    {"title": str, "model": str, "created": ISO time, "commit": str, "command": str, "recipe": {...},
     "rows": [{"variant": str, "bytes": int, "params": int | None, "macs": int | None,
               "top1": float | None (0..1), "latency_ms": {"runtime@target": float, ...},
               "file": str | None, "notes": str | None}],
     "search": {"budget": {...}, "measurements": int,
                "front": [{"bytes", "predicted_ms", "measured_ms", "proxy", "top1", "chosen"}],
                "trace": [{"step", "change", "bytes", "macs", "predicted_ms", "measured_ms",
                           "proxy", "accepted"}]},
     "layers": [{"name", "channels_before", "channels_after", "keep_ratio", "bits"}],
     "steps": [{"name", "seconds", "status"}]}

Only ``rows`` is required; missing sections are left out and missing values read "not measured".
"""

from edgeslim.report.api import REPORT_FILES, render_report
from edgeslim.report.data import ReportDataError
from edgeslim.report.html import render_html
from edgeslim.report.markdown import render_markdown

__all__ = ["REPORT_FILES", "ReportDataError", "render_html", "render_markdown", "render_report"]
