"""What produced a results row: the command, the commit (``+dirty`` for uncommitted code), the date.

Every benchmark stamps its rows with :func:`record` so a stale row can be told from a fresh one, and
its Markdown names the runs behind the table with :func:`runs_lines`.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def commit() -> str:
    """``git rev-parse --short HEAD``, plus ``+dirty`` when tracked files outside ``benchmarks/results`` changed."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def record(script: str, argv: list[str] | None = None) -> dict[str, str]:
    """``command``, ``commit`` and ``date`` of this run of ``benchmarks/<script>``."""
    args = sys.argv[1:] if argv is None else argv
    return {
        "command": " ".join(["python", f"benchmarks/{script}", *map(shlex.quote, args)]),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def runs_lines(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Markdown paragraphs (each after a blank line) naming the runs behind ``rows``, and how many rows have
    no record (to regenerate)."""
    rows = list(rows)
    dates: dict[tuple[str, str], list[str]] = {}  # one entry per command and commit: its rows' dates
    for r in rows:
        if r.get("commit"):
            dates.setdefault((r["command"], r["commit"]), []).append(r["date"])
    runs = sorted(dates.items(), key=lambda kv: min(kv[1]))
    lines = []
    if runs:
        lines.append("Rows produced by: " + "; ".join(f"`{c}` at commit `{k}` ({_span(d)})" for (c, k), d in runs) + ".")
    stale = sum(1 for r in rows if not r.get("commit"))
    if stale:
        lines.append(f"{stale} of {len(rows)} rows predate provenance records (no command or commit): regenerate them.")
    return [line for text in lines for line in ("", text)]


def _span(dates: list[str]) -> str:
    """The date of a run's one row, or its row count and first (and last) date."""
    first, last = min(dates), max(dates)
    if len(dates) == 1:
        return first
    return f"{len(dates)} rows, {first}" + ("" if first == last else f" to {last}")


__all__ = ["commit", "record", "runs_lines"]
