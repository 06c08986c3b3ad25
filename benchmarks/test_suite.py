"""The test suite's wall time and coverage: the README's test command with ``--cov=edgeslim``.

Runs (or, with ``--from-log``, reads the output of) ``pytest -q -m "not gpu" ... --cov=edgeslim
--cov-report=term`` and records one row under a label (``before`` / ``after``): the pytest command, the
commit, the wall time, the passed / failed / error counts, the coverage TOTAL and the machine's load
(``/proc/loadavg`` at the start and at the end, and its core count). Rows go to
``benchmarks/results/test_suite.{json,md}``; a label already there is replaced, and the Markdown's
``## Notes`` section is kept.

    .venv/bin/python benchmarks/test_suite.py --label after
    .venv/bin/python benchmarks/test_suite.py --label before --from-log run.log --wall-s 2400 \\
        --pytest-args='-q -m "not gpu" -n 2 --dist loadfile --cov=edgeslim --cov-report=term' --note "..."
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import record, runs_lines

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
#: The README's test command (what .ci/run runs), plus coverage.
NOTES = "## Notes"
README_ARGS = '-q -m "not gpu" -n 2 --dist loadfile --durations=40 --cov=edgeslim --cov-report=term'


def parse(log: str) -> dict[str, Any]:
    """Counts from pytest's last summary line and the coverage TOTAL percentage of ``log``."""
    out: dict[str, Any] = {}
    summary = [ln for ln in log.splitlines() if re.search(r"\d+ (passed|failed)", ln) and " in " in ln]
    if summary:
        for n, what in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)", summary[-1]):
            out[what.rstrip("s") if what.startswith("error") else what] = int(n)
        secs = re.search(r" in ([\d.]+)s", summary[-1])
        out["pytest_s"] = float(secs.group(1)) if secs else None
    total = re.search(r"^TOTAL\s+(\d+)\s+(\d+)\s+(?:\d+\s+\d+\s+)?(\d+(?:\.\d+)?)%", log, re.M)
    if total:
        out["statements"], out["missed"], out["coverage_pct"] = int(total.group(1)), int(total.group(2)), float(total.group(3))
    out["failed_tests"] = re.findall(r"^(?:FAILED|ERROR) (\S+)", log, re.M)
    return out


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(args: str) -> tuple[str, float, str, str]:
    """Run pytest with ``args`` from the repository root; its output, wall seconds and the load before / after."""
    before = load()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", *shlex.split(args)], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    return proc.stdout + proc.stderr, time.perf_counter() - t0, before, load()


def write(rows: list[dict[str, Any]]) -> None:
    """``test_suite.json`` and its Markdown table."""
    (RESULTS / "test_suite.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# Test suite: wall time and coverage", "",
             "`python benchmarks/test_suite.py` runs the README's test command with `--cov=edgeslim --cov-report=term`",
             "(what `.ci/run` runs) and records its wall time, counts and the coverage TOTAL. Wall times on the shared",
             "development machine (2 cores, other jobs running: see the load column) are not CI's; `.ci/run` prints",
             "CI's (`ci: tests took N s`).", "",
             "| Label | pytest arguments | Wall (s) | Passed | Failed | Errors | Coverage | Load (start / end), cores | Note |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        cov = f"{r['coverage_pct']:.0f} % ({r['statements'] - r['missed']} / {r['statements']})" if "coverage_pct" in r else "—"
        lines.append(f"| {r['label']} | `{r['pytest_args']}` | {r['wall_s']:.0f} | {r.get('passed', 0)} | "
                     f"{r.get('failed', 0)} | {r.get('error', 0)} | {cov} | {r['load_start']} / {r['load_end']}, "
                     f"{r['cores']} | {r.get('note', '')} |")
    for r in rows:
        if r.get("failed_tests"):
            lines += ["", f"Failed in `{r['label']}`: " + ", ".join(f"`{t}`" for t in r["failed_tests"]) + "."]
    lines += runs_lines(rows)
    md = RESULTS / "test_suite.md"
    old = md.read_text() if md.exists() else ""
    notes = old[old.index(NOTES):] if NOTES in old else ""  # hand-written, kept across runs
    md.write_text("\n".join(lines) + "\n" + ("\n" + notes if notes else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", required=True, help="Row label, e.g. before / after")
    p.add_argument("--pytest-args", default=README_ARGS, help="pytest's arguments (default: the README's + coverage)")
    p.add_argument("--from-log", type=Path, help="Read this pytest output instead of running pytest")
    p.add_argument("--wall-s", type=float, help="With --from-log: the run's wall seconds (default: pytest's own)")
    p.add_argument("--load", default="", help="With --from-log: the load at the start and end, as 'START / END'")
    p.add_argument("--note", default="")
    a = p.parse_args()
    if a.from_log:
        log = a.from_log.read_text()
        parsed = parse(log)
        start, _, end = (a.load or "? / ?").partition(" / ")
        wall = a.wall_s or parsed.get("pytest_s") or 0.0
    else:
        log, wall, start, end = run(a.pytest_args)
        parsed = parse(log)
        (RESULTS / f"test_suite_{a.label}.log").write_text(log)
    row = {"label": a.label, "pytest_args": a.pytest_args, "wall_s": round(wall, 1), **parsed,
           "load_start": start, "load_end": end, "cores": os.cpu_count(), "note": a.note, **record("test_suite.py")}
    path = RESULTS / "test_suite.json"
    rows = [r for r in (json.loads(path.read_text()) if path.exists() else []) if r["label"] != a.label]
    write([*rows, row])
    print(json.dumps({k: v for k, v in row.items() if k != "failed_tests"}))


if __name__ == "__main__":
    main()
