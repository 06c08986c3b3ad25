"""Writing the report files: ``report.html`` and ``report.md`` in an output folder."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeslim.report.data import check_results
from edgeslim.report.html import render_html
from edgeslim.report.markdown import render_markdown

#: The files :func:`render_report` writes, by key of its returned dict.
REPORT_FILES = {"html": "report.html", "md": "report.md"}


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder (no half-written report)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_report(results: Mapping[str, Any], out_dir: Path, *, overwrite: bool = False) -> dict[str, Path]:
    """Render the results as ``report.html`` (self-contained, with plots) and ``report.md`` (tables).

    Both texts are rendered before anything is written, and each file is replaced atomically.

    Args:
        results: The results dict (``results.json``); only ``rows`` is required.
        out_dir: The folder to write into (created if missing).
        overwrite: Replace report files that already exist.

    Returns:
        ``{"html": out_dir / "report.html", "md": out_dir / "report.md"}``.

    Raises:
        ReportDataError: ``results`` has no ``rows`` list.
        OutputExistsError: A report file exists and ``overwrite`` is false (the message names it
            and ``--force``); nothing is written then.
    """
    from edgeslim.exporters.errors import OutputExistsError

    check_results(results)
    out_dir = Path(out_dir)
    paths = {key: out_dir / name for key, name in REPORT_FILES.items()}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "pass overwrite=True (CLI: --force) to replace the report"
        )
    texts = {"html": render_html(results), "md": render_markdown(results)}
    out_dir.mkdir(parents=True, exist_ok=True)
    for key, path in paths.items():
        _write_atomic(path, texts[key])
    return paths
